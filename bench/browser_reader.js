// Installed in every page once it is live by bench/browser.py; returns the page's clock against
// the wall clock. The view's `update` is where every transaction lands, local or remote, and the
// DOM is in step with the new text when it returns. `receive` is where the room's frames enter
// the editor.
([me]) => {
    const editor = window.collabEditor;
    const view = editor.view;
    const bench = (window.bench = { samples: [], arrivals: [], sent: 0, typing: false });
    const word = /t(\d+)\.(\d+)@(\d+(?:\.\d+)?)/g;
    const now = () => performance.timeOrigin + performance.now();
    const others = (text, seen, into) => {
        const at = now();
        for (const match of text.matchAll(word)) {
            const key = match[1] + "." + match[2];
            if (Number(match[1]) === me || seen.has(key)) continue;
            seen.add(key);
            into.push(at - Number(match[3]));
        }
    };
    const arrived = new Set();
    const receive = editor.receive;
    editor.receive = function (gen, data) {
        others(data, arrived, bench.arrivals);
        return receive.call(this, gen, data);
    };
    const applied = new Set();
    const update = view.update;
    view.update = function (transactions) {
        update.call(this, transactions);
        for (const tr of transactions) {
            tr.changes.iterChanges((fromA, toA, fromB, toB, inserted) => {
                others(inserted.toString(), applied, bench.samples);
            });
        }
    };
    // Date.now() counts whole milliseconds: averaged over 20 ms, the difference is this page's
    // offset (plus half a millisecond); pages on different clocks would show different ones.
    let sum = 0, count = 0;
    const end = performance.now() + 20;
    while (performance.now() < end) {
        sum += now() - Date.now();
        count += 1;
    }
    return sum / count;
}
