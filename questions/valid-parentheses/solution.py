def is_valid(s: str) -> bool:
    # A stack of the closers still expected; each closer must be the one on top.
    closers = {"(": ")", "[": "]", "{": "}"}
    expected: list[str] = []
    for char in s:
        if char in closers:
            expected.append(closers[char])
        elif not expected or expected.pop() != char:
            return False
    return not expected
