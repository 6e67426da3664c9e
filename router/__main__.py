from router.cli import app

app(prog_name="router")
