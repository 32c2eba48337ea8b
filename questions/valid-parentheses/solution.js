function isValid(s) {
  // A stack of the closers still expected; each closer must be the one on top.
  const closers = new Map([["(", ")"], ["[", "]"], ["{", "}"]]);
  const expected = [];
  for (const char of s) {
    if (closers.has(char)) {
      expected.push(closers.get(char));
    } else if (expected.length === 0 || expected.pop() !== char) {
      return false;
    }
  }
  return expected.length === 0;
}
