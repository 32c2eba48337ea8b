function mergeIntervals(intervals) {
  // Return the merged intervals, sorted by start.
  return null;
}
