def two_sum(nums: list[int], target: int) -> list[int]:
    # One pass: remember where each number was seen; the complement of the current one may be there.
    seen: dict[int, int] = {}
    for index, number in enumerate(nums):
        other = seen.get(target - number)
        if other is not None:
            return [other, index]
        seen[number] = index
    return []
