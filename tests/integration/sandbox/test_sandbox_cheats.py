"""Programs that cheat the harness instead of solving the task: exiting before or during the tests,
forging the report, reading the nonce, results whose __eq__ always agrees, patched builtins,
shadowed or redefined checks, generators. Each scores 0 and is contained."""

from __future__ import annotations

import textwrap

from support.sandbox import GOOD, contained


def test_sys_exit_before_tests(box):
    res = contained(box, GOOD + "import sys\nsys.exit(0)\n")
    assert res.load_error and not res.finished


def test_os_exit_before_tests(box):
    res = contained(box, GOOD + "import os\nos._exit(0)\n")
    assert res.load_error


def test_exit_during_the_tests(box):
    contained(box, "def add(a, b):\n    import sys\n    sys.exit(0)\n")
    res = contained(box, "def add(a, b):\n    import os\n    os._exit(0)\n")
    assert not res.load_error


def test_forged_report(box):
    fake = "".join(f"x {i} 1\n" for i in range(3)) + "x done\n"
    program = GOOD + textwrap.dedent(f"""
        import os, sys
        print({fake!r})
        for fd in range(0, 256):
            try:
                os.write(fd, {fake.encode()!r})
            except OSError:
                pass
        os._exit(0)
    """)
    contained(box, program)


def test_reading_the_nonce_from_the_test_process(box):
    program = GOOD + textwrap.dedent("""
        import os
        found = []
        for path in ("/proc/1/mem", "/proc/1/environ", "/proc/1/fd", "/proc/%d/fd" % os.getppid()):
            try:
                found.append(os.listdir(path) if path.endswith("fd") else open(path, "rb").read(64))
            except OSError:
                pass
        print(found)
        os._exit(0)
    """)
    contained(box, program)


def test_eq_override_on_the_result(box):
    program = textwrap.dedent("""
        class Anything:
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            def __lt__(self, other): return True
            def __sub__(self, other): return self
            def __abs__(self): return 0
            def __bool__(self): return True
        def add(a, b):
            return Anything()
    """)
    contained(box, program)


def test_int_and_list_subclasses_with_eq(box):
    contained(box, "class I(int):\n    def __eq__(self, o): return True\ndef add(a, b):\n    return I(0)\n")
    contained(box, "class L(list):\n    def __eq__(self, o): return True\ndef add(a, b):\n    return [L()]\n",
              tests=["assert add(1, 2) == [[3]]"])


def test_monkey_patching_builtins_and_modules(box):
    program = textwrap.dedent("""
        import builtins, math
        builtins.abs = lambda x: 0
        builtins.isinstance = lambda *a: True
        math.isclose = lambda *a, **k: True
        AssertionError = Exception
        def add(a, b):
            import builtins
            builtins.abs = lambda x: 0
            return 0
    """)
    tests = ["assert abs(add(1, 2) - 3) < 1e-9", "import math\nassert math.isclose(add(1, 1), 2)"]
    contained(box, program, tests=tests)


def test_shadowing_a_builtin_the_tests_use(box):
    program = "def abs(x):\n    return 0\ndef add(a, b):\n    return 0\n"
    contained(box, program, tests=["assert abs(add(1, 2) - 3) < 1e-9"])


def test_redefining_the_check_function(box):
    program = textwrap.dedent("""
        def check(candidate):
            pass
        def assert_equal(*a):
            pass
        def add(a, b):
            return 0
    """)
    setup = "def assert_equal(a, b):\n    assert a == b\n\ndef check(candidate):\n    assert candidate(1, 2) == 3\n"
    contained(box, program, tests=["check(candidate)", "assert_equal(add(2, 2), 4)"], setup=setup,
              entry_point="add")


def test_generator_and_non_plain_results_fail(box):
    contained(box, "def add(a, b):\n    yield a + b\n", tests=["assert list(add(1, 2)) == [3]"])
    contained(box, "def add(a, b):\n    return lambda: a + b\n", tests=["assert add(1, 2)() == 3"])
