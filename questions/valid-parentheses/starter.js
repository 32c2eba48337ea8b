function isValid(s) {
  // Return true when every bracket in s is closed by the same kind, in the right order.
  return null;
}
