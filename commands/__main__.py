from commands import app

app(prog_name="router")
