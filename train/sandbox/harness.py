"""The sandbox's first Python: it turns the network off, then runs the candidate program (candidate.py in its
working folder) and exits with a code that says how the program ended. It runs as a script under
`python -I` (no user site, no PYTHONPATH: nothing of the project is importable), started by jail.py.

Exit codes: 0 the program ran to its end (and the run's token, read from stdin before the program starts,
is the last line on stdout: a program that exits early with status 0 does not pass), 1 an AssertionError
(the tests rejected it), 2 any other exception (SyntaxError, NameError, OSError from a refused file or
socket...), 3 MemoryError (the memory limit). The last line on stderr is the exception.
"""

from __future__ import annotations

import builtins
import os
import sys
import traceback
from typing import Any, NoReturn

FAILED, ERROR, OUT_OF_MEMORY = 1, 2, 3


def _refused(*args: Any, **kwargs: Any) -> NoReturn:
    raise PermissionError("network access is disabled in the sandbox")


def refuse_network() -> None:
    """Sockets raise before the program runs. The second guard: jail.py's network namespace and seccomp
    filter hold even against code that reaches the original classes."""
    import _socket
    import socket

    class NoSocket(_socket.socket):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            _refused()

    # socket.socket.__init__ calls `_socket.socket.__init__` by name, so this stops it and its subclasses.
    _socket.socket = _socket.SocketType = NoSocket  # type: ignore[misc]
    socket.SocketType = NoSocket
    for module, name in [
        (socket, "socketpair"),
        (_socket, "socketpair"),
        (socket, "fromfd"),
        (socket, "create_connection"),
        (socket, "create_server"),
    ]:
        setattr(module, name, _refused)


def _exit(code: int, exc: BaseException | None = None) -> NoReturn:
    if exc is not None:
        line = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1:]
        os.write(2, ("\n" + "".join(line) + "\n").encode(errors="replace"))
    os._exit(code)  # no atexit handler the program registered runs


def main() -> NoReturn:
    token = sys.stdin.readline().strip()
    sys.stdin.close()  # and with it fd 0: the program reads nothing, the token included
    with open("candidate.py", encoding="utf-8") as f:
        source = f.read()
    refuse_network()
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(source, "candidate.py", "exec"), namespace)
        sys.stdout.flush()
    except AssertionError as exc:
        _exit(FAILED, exc)
    except MemoryError as exc:
        _exit(OUT_OF_MEMORY, exc)
    except BaseException as exc:  # SystemExit too: a program that exits has not passed its tests
        _exit(ERROR, exc)
    os.write(1, f"\n{token}\n".encode())
    _exit(0)


if __name__ == "__main__":
    main()
