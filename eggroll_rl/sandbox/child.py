"""The program that runs in the sandbox: the launcher, the test process and the candidate process.

The parent does not import this to run it: ``launcher.child_source`` sends this module's source,
preceded by the sibling modules it imports, to ``python -I -S -B -c`` (the mount namespace hides
eggroll_rl from the child, and ``-S`` drops site-packages). So these modules use the stdlib
only, import siblings only as ``from .module import name`` (those lines are dropped when the
sources are joined into one script, so top-level names must not clash across them), and do
nothing on import but define names. The launcher (``main``) runs as root (or namespace root)
until ``confine`` drops that.
"""

import builtins
import marshal
import os
import sys

from .child_confine import alarm, confine, finish, reaper
from .child_wire import plain, read_all, recv, send, write_all


def exec_program(source, name):
    """Run a program as a module called `name`; returns its namespace. May raise anything."""
    ns = {"__name__": name, "__builtins__": builtins}
    exec(compile(source, "<program>", "exec"), ns)
    return ns


def flush():
    """Push the candidate's prints out before it can be killed (they help debugging)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def serve(job, rfd, wfd):
    """The candidate process: load the program, then answer calls with plain data."""
    try:
        ns = exec_program(job["program"], "__candidate__")
    except BaseException as exc:  # SystemExit included: exiting early is a failure
        try:
            sys.excepthook(type(exc), exc, exc.__traceback__)
            sys.stdout.flush()
            send(wfd, ("error", type(exc).__name__))
        except BaseException:
            pass
        os._exit(1)
    names = [k for k, v in ns.items() if callable(v) and not k.startswith("__")]
    flush()
    send(wfd, ("ready", names))
    while True:
        try:
            msg = recv(rfd)
        except BaseException:
            try:
                sys.stdout.flush()
            except BaseException:
                pass
            os._exit(0)
        name, args, kwargs = msg[1], msg[2], msg[3]
        try:
            value = ns[name](*args, **kwargs)
            if plain(value):
                reply = ("ok", value)
            else:
                reply = ("exc", "TypeError", "returned a non-plain value")
        except BaseException as exc:
            try:
                text = str(exc)[:300]
            except BaseException:
                text = ""
            reply = ("exc", str(type(exc).__name__)[:100], text if type(text) is str else "")
        flush()
        try:
            send(wfd, reply)
        except ValueError:  # unmarshallable after all
            send(wfd, ("exc", "TypeError", "returned a non-plain value"))


def make_stub(name, rfd, wfd):
    """Test-side stand-in for the candidate's function `name`."""

    def stub(*args, **kwargs):
        send(wfd, ("call", name, args, kwargs))
        reply = recv(rfd)
        if type(reply) is not tuple or not reply:
            raise RuntimeError("bad reply from the candidate")
        if reply[0] == "ok" and len(reply) == 2 and plain(reply[1]):
            return reply[1]
        if reply[0] == "exc" and len(reply) == 3 and type(reply[1]) is str:
            etype = getattr(builtins, reply[1], None)
            if not (isinstance(etype, type) and issubclass(etype, Exception)):
                etype = RuntimeError
            try:
                exc = etype(reply[2] if type(reply[2]) is str else "")
            except Exception:
                exc = RuntimeError(reply[1])
            raise exc
        raise RuntimeError("bad reply from the candidate")

    stub.__name__ = stub.__qualname__ = name
    return stub


def run_tests(cfg, job, prctl):
    """Fork the candidate, then run the tests here, reporting each with the nonce."""
    to_cand_r, to_cand_w = os.pipe()
    to_test_r, to_test_w = os.pipe()
    child = [os.fork()]
    if child[0] == 0:  # the candidate process: no tests, no nonce, no result pipe
        os.close(cfg["test_fd"])
        os.close(cfg["result_fd"])
        os.close(to_cand_w)
        os.close(to_test_r)
        try:
            prctl(1, 9)
        except OSError:
            pass
        serve(job, to_cand_r, to_test_w)
        os._exit(0)
    os.close(to_cand_r)
    os.close(to_test_w)
    alarm(cfg["alarm"], child)
    reaper(prctl)
    try:
        run_steps(cfg, to_test_r, to_cand_w)
    finally:  # also when the trainer stopped listening (EPIPE): reap before leaving
        finish(cfg, child[0], 0)


def run_steps(cfg, to_test_r, to_cand_w):
    """The test process proper: stubs for the candidate's functions, setup, steps, report."""
    tests = marshal.loads(read_all(cfg["test_fd"]))
    nonce, rfd = tests["nonce"], cfg["result_fd"]

    def report(line):
        write_all(rfd, ("%s %s\n" % (nonce, line)).encode())

    try:
        hello = recv(to_test_r)
        ok = type(hello) is tuple and len(hello) == 2 and hello[0] == "ready" and type(hello[1]) is list
    except BaseException:
        ok = False
    if not ok:
        report("load-error")
    else:
        available = {n for n in hello[1] if type(n) is str}
        ns = {"__name__": "__test__", "__builtins__": builtins}
        for name in tests["names"]:
            if name in available:
                ns[name] = make_stub(name, to_test_r, to_cand_w)
        if tests["entry_point"]:
            ns["candidate"] = make_stub(tests["entry_point"], to_test_r, to_cand_w)
        broken = False
        try:
            exec(compile(tests["setup"], "<test setup>", "exec"), ns)
        except BaseException:
            broken = True
        for i, (source, counted) in enumerate(tests["cases"]):
            passed = False
            if not broken:
                try:
                    exec(compile(source, "<test %d>" % i, "exec"), ns)
                    passed = True
                except BaseException:
                    broken = not counted
            if counted:
                report("%d %d" % (i, int(passed)))
        report("done")


def run_stdio(cfg, job, prctl):
    """Run the program as __main__ in a child whose stdin is the case input; mirror its status."""
    memfd = os.memfd_create("stdin")
    write_all(memfd, job["stdin"])
    os.lseek(memfd, 0, 0)
    child = [os.fork()]
    if child[0] == 0:
        os.dup2(memfd, 0)
        os.close(memfd)
        try:
            prctl(1, 9)
        except OSError:
            pass
        code = 0
        try:
            sys.argv = ["main.py"]
            exec_program(job["program"], "__main__")
        except SystemExit as exc:
            code = exc.code if type(exc.code) is int else (0 if exc.code is None else 1)
        except BaseException:
            try:
                sys.excepthook(*sys.exc_info())
            except BaseException:
                pass
            code = 1
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(code & 0xFF)
    os.close(memfd)
    alarm(cfg["alarm"], child)
    statuses = reaper(prctl)
    while child[0] not in statuses:
        try:
            pid, status = os.waitpid(child[0], 0)
            statuses[pid] = status
        except ChildProcessError:
            if child[0] not in statuses:
                statuses[child[0]] = 1 << 8
    status = statuses[child[0]]
    finish(cfg, child[0], os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


def main():
    cfg = marshal.loads(bytes.fromhex(sys.argv[1]))
    job = marshal.loads(read_all(cfg["job_fd"]))
    prctl = confine(cfg)
    if cfg["mode"] == "tests":
        run_tests(cfg, job, prctl)
    else:
        run_stdio(cfg, job, prctl)



if __name__ == "__main__":
    main()
