function twoSum(nums, target) {
  // One pass: remember where each number was seen; the complement of the current one may be there.
  const seen = new Map();
  for (let index = 0; index < nums.length; index++) {
    const other = seen.get(target - nums[index]);
    if (other !== undefined) {
      return [other, index];
    }
    seen.set(nums[index], index);
  }
  return [];
}
