def length_of_longest_substring(s: str) -> int:
    # A sliding window s[start:index + 1] without repeats: on a repeat, start moves past the
    # character's previous position (if that is inside the window).
    last_seen: dict[str, int] = {}
    start = best = 0
    for index, char in enumerate(s):
        if last_seen.get(char, -1) >= start:
            start = last_seen[char] + 1
        last_seen[char] = index
        best = max(best, index - start + 1)
    return best
