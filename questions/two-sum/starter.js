function twoSum(nums, target) {
  // Return the indices of the two numbers in nums that add up to target, in any order.
  return null;
}
