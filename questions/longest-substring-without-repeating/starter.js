function lengthOfLongestSubstring(s) {
  // Return the length of the longest run of s with no repeated character.
  return null;
}
