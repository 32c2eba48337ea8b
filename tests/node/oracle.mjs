// Node side of tests/test_changes_differential.py: computes each case with the real @codemirror/state.
//
// stdin: one JSON object per line: {doc, a, b, c, positions, replace}, where a and b are ChangeSet
// JSON over doc, c is ChangeSet JSON over a's result, positions are offsets into doc and replace is
// [length, from, to, insert] for ChangeSet.of. JSON keeps strings in UTF-16 terms (astral
// characters arrive as surrogate pairs), so doc is the same JS string the editor would hold.
// stdout: one JSON object per line, in the same order: {apply, a, map, mapBefore, bMapA, compose,
// mapPos, ofReplace} with every ChangeSet as toJSON(); or {error} when CodeMirror throws.
import { readFileSync } from "node:fs";
import { ChangeSet, Text } from "@codemirror/state";

function compute(input) {
  const doc = Text.of(input.doc.split("\n"));
  const a = ChangeSet.fromJSON(input.a);
  const b = ChangeSet.fromJSON(input.b);
  const c = ChangeSet.fromJSON(input.c);
  const [length, from, to, insert] = input.replace;
  return {
    apply: a.apply(doc).toString(),
    a: a.toJSON(),
    map: a.map(b).toJSON(),
    mapBefore: a.map(b, true).toJSON(),
    bMapA: b.map(a).toJSON(),
    compose: a.compose(c).toJSON(),
    mapPos: input.positions.map((pos) => [a.mapPos(pos, -1), a.mapPos(pos, 1)]),
    ofReplace: ChangeSet.of({ from, to, insert }, length).toJSON(),
  };
}

const lines = readFileSync(0, "utf8").split("\n").filter((line) => line.length > 0);
const out = [];
for (const line of lines) {
  let result;
  try {
    result = compute(JSON.parse(line));
  } catch (err) {
    result = { error: String(err && err.stack ? err.stack : err) };
  }
  out.push(JSON.stringify(result));
}
process.stdout.write(out.join("\n") + "\n");
