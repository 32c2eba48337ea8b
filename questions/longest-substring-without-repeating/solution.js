function lengthOfLongestSubstring(s) {
  // A sliding window s.slice(start, index + 1) without repeats: on a repeat, start moves past the
  // character's previous position (if that is inside the window).
  const lastSeen = new Map();
  let start = 0;
  let best = 0;
  for (let index = 0; index < s.length; index++) {
    const previous = lastSeen.get(s[index]);
    if (previous !== undefined && previous >= start) {
      start = previous + 1;
    }
    lastSeen.set(s[index], index);
    best = Math.max(best, index - start + 1);
  }
  return best;
}
