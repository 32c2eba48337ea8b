// Other members' carets and selections in the editor: a field of decorations that every
// transaction maps, so they move with text inserted before them; `caretDecorations` makes the
// effect that replaces the whole set. Names are text, never markup.
import * as CM from "nicegui-codemirror";

// Black or white, whichever reads better on a #rrggbb background.
function readableOn(color) {
  const value = parseInt(color.slice(1), 16);
  const [r, g, b] = [(value >> 16) & 255, (value >> 8) & 255, value & 255];
  return 0.299 * r + 0.587 * g + 0.114 * b > 150 ? "#111" : "#fff";
}

// Remote cursors and selections: a field of decorations that every transaction maps, so they
// move with text inserted before them; a `setCursors` effect replaces the set.
const setCursors = CM.StateEffect.define();

class CaretWidget extends CM.WidgetType {
  constructor(name, color, below) {
    super();
    this.name = name;
    this.color = color;
    this.below = below; // on the first line the label goes under the caret, not out of view
  }
  eq(other) {
    return other.name === this.name && other.color === this.color && other.below === this.below;
  }
  toDOM() {
    const caret = document.createElement("span");
    caret.className = "collab-caret";
    caret.style.borderLeftColor = this.color;
    const label = document.createElement("span");
    label.className = this.below ? "collab-caret-label collab-caret-label-below" : "collab-caret-label";
    label.style.backgroundColor = this.color;
    label.style.color = readableOn(this.color);
    label.textContent = this.name; // text, never markup
    caret.appendChild(label);
    return caret;
  }
  ignoreEvent() {
    return true;
  }
}

const cursorField = CM.StateField.define({
  create: () => CM.Decoration.none,
  update(set, tr) {
    set = set.map(tr.changes);
    for (const effect of tr.effects) if (effect.is(setCursors)) set = effect.value;
    return set;
  },
  provide: (field) => CM.EditorView.decorations.from(field),
});

const cursorTheme = CM.EditorView.baseTheme({
  ".collab-caret": { position: "relative", borderLeft: "2px solid", marginLeft: "-1px", marginRight: "-1px" },
  ".collab-caret-label": {
    ...{ position: "absolute", top: "-1.35em", left: "-2px", padding: "0 4px", borderRadius: "3px 3px 3px 0" },
    ...{ fontSize: "11px", lineHeight: "1.35em", fontFamily: "system-ui, sans-serif", whiteSpace: "nowrap" },
    ...{ pointerEvents: "none", zIndex: 10, opacity: 0.95 },
  },
  ".collab-caret-label-below": { top: "1.35em", borderRadius: "0 3px 3px 3px" },
});

// The extension to give the editor.
export const remoteCarets = [cursorField, cursorTheme];

// The effect that shows these carets ({anchor, head, name, color}, positions in the editor's
// text) and nothing else.
export function caretDecorations(state, carets) {
  const ranges = [];
  const length = state.doc.length;
  for (const caret of carets) {
    const from = Math.min(caret.anchor, caret.head, length);
    const to = Math.min(Math.max(caret.anchor, caret.head), length);
    const style = `background-color: ${caret.color}33`;
    if (from < to) ranges.push(CM.Decoration.mark({ attributes: { style } }).range(from, to));
    const head = Math.min(caret.head, length);
    const widget = new CaretWidget(caret.name, caret.color, state.doc.lineAt(head).number === 1);
    ranges.push(CM.Decoration.widget({ widget, side: 1 }).range(head));
  }
  return setCursors.of(CM.Decoration.set(ranges, true));
}
