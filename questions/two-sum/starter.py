def two_sum(nums: list[int], target: int) -> list[int]:
    # Return the indices of the two numbers in nums that add up to target, in any order.
    pass
