# `python -m router`: the whole `router` command, which commands/ assembles above router/ and train/.
from commands import app

app(prog_name="router")
