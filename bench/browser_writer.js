// Started in a typist's page by bench/browser.py; returns at once and types for `seconds` on the
// page's own timers.
([me, rate, seconds]) => {
    const view = window.collabEditor.view;
    const bench = window.bench;
    view.dispatch({ selection: { anchor: view.state.doc.length } });
    const end = performance.now() + seconds * 1000;
    bench.typing = true;
    const next = () => {
        if (performance.now() >= end) {
            bench.typing = false;
            return;
        }
        bench.sent += 1;
        const word = `t${me}.${bench.sent}@${(performance.timeOrigin + performance.now()).toFixed(1)}`;
        const text = bench.sent % 4 === 1 ? `# ${word}` : bench.sent % 4 === 0 ? ` ${word}\n` : ` ${word}`;
        view.dispatch({ ...view.state.replaceSelection(text), userEvent: "input.type" });
        setTimeout(next, (-Math.log(1 - Math.random()) * 1000) / rate);
    };
    setTimeout(next, (Math.random() * 1000) / rate);
}
