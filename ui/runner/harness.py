# Runs a question's test cases against the candidate's function, inside Pyodide.
#
# The worker runs the candidate's code, then this file, then calls
# ``run_cases(namespace, function, cases_json)``: ``namespace`` is the dict the code ran in,
# ``cases_json`` the ``cases`` of the room's ``run_cases`` message. The answer is a JSON list with,
# per case in order, ``{"actual": value}`` or ``{"error": "ExcType: message"}``; the room judges
# it (rooms/questions.py). Whatever the function prints goes to stdout as usual.
#
# It runs in a namespace of its own (ui/runner/python_runner.js, for the worker and the node
# tests alike), not the candidate's: a name the candidate's code defines never meets one of this
# file. Its imports and helpers live inside ``run_cases`` all the same, so that the file defines
# that one name. ui/runner/harness.js is its JavaScript twin: keep the two in step.


def run_cases(namespace: dict[str, object], function: str, cases_json: str) -> str:
    import copy
    import json

    max_error_chars = 500  # rooms.questions.MAX_ERROR_CHARS
    max_result_chars = 10_000  # rooms.questions.MAX_RESULT_CHARS

    def not_json(what: str) -> TypeError:
        return TypeError(f"result is not JSON: {what}")

    def to_json(value: object) -> object:
        # JSON's own types, built afresh: subclasses (IntEnum, a str subclass) become the base type.
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                raise not_json(repr(value))
            return float(value)
        if isinstance(value, str):
            return str(value)
        if isinstance(value, list | tuple):
            return [to_json(item) for item in value]
        if isinstance(value, set | frozenset):
            try:
                ordered = sorted(value)
            except TypeError:
                raise not_json(f"{type(value).__name__} of values that do not sort") from None
            return [to_json(item) for item in ordered]
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, str):
                    raise not_json(f"dict with a {type(key).__name__} key")
            return {str(key): to_json(item) for key, item in value.items()}
        raise not_json(type(value).__name__)

    def describe(exc: BaseException) -> str:
        try:
            text = str(exc)
        except Exception:  # an exception whose __str__ raises must not end the whole run
            text = ""
        message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        return message[:max_error_chars]

    cases = json.loads(cases_json)
    target = namespace.get(function)
    if not callable(target):
        return json.dumps([{"error": f"NameError: no function named {function}"} for _ in cases])

    def run_case(case: dict[str, list[object]]) -> dict[str, object]:
        try:
            returned = target(*copy.deepcopy(case["args"]))
        except (Exception, SystemExit) as exc:  # KeyboardInterrupt is left alone: it stops the run
            return {"error": describe(exc)}
        try:
            actual = to_json(returned)
        except RecursionError:  # a list that contains itself
            return {"error": describe(TypeError("result is not JSON: nested too deeply"))}
        except Exception as exc:  # not_json's TypeError, or a __lt__ that raises while a set sorts
            return {"error": describe(exc)}
        size = len(json.dumps(actual))
        if size > max_result_chars:
            too_large = ValueError(f"result is too large: {size} characters of JSON (at most {max_result_chars})")
            return {"error": describe(too_large)}
        return {"actual": actual}

    return json.dumps([run_case(case) for case in cases])
