// The Python that runs a program in Pyodide, shared by worker_python.js and
// tests/node/run_cases.mjs (which runs the questions' cases the way the page does).
//
// `run(code, function, cases_json, harness)`, awaited: the code is compiled as main.py (a
// traceback shows its frames only; top-level await works) and run in a namespace of its own;
// then, for tests, harness.py runs in another namespace and its run_cases calls `function` from
// the code's. The answer is ["ok" | "error", results JSON or None].
//
// sys.stdout and sys.stderr are replaced, before the code is compiled, by text streams that write
// through to file descriptors 1 and 2 at every write: Pyodide's own are buffered, so text printed
// without a newline ("partial", a prompt) would wait in a buffer, and be lost with it when a run
// that never ends is stopped at the time limit.
export const RUNNER = `
import ast, inspect, io, json, sys, traceback

def _text_stream(fd):
    raw = io.FileIO(fd, "w", closefd=False)
    return io.TextIOWrapper(
        raw, encoding="utf-8", errors="backslashreplace", line_buffering=True, write_through=True
    )

def _user_frames(tb):
    while tb is not None and tb.tb_frame.f_code.co_filename != "main.py":
        tb = tb.tb_next
    return tb

async def run(code, function, cases_json, harness):
    sys.stdout = _text_stream(1)
    sys.stderr = _text_stream(2)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        compiled = compile(code, "main.py", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        result = eval(compiled, namespace)
        if inspect.iscoroutine(result):
            await result
    except SystemExit as exit:
        if exit.code not in (None, 0):
            if not isinstance(exit.code, int):
                print(exit.code, file=sys.stderr)
            return ["error", None]
    except BaseException as error:
        traceback.print_exception(type(error), error, _user_frames(error.__traceback__))
        return ["error", None]
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    if not function:
        return ["ok", None]
    scope = {"__name__": "collab_harness"}
    exec(compile(harness, "harness.py", "exec"), scope)
    try:
        return ["ok", scope["run_cases"](namespace, function, cases_json)]
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
run
`;
