// A private room's access, as the editor shows it: the methods collab_editor.js mixes into its
// component.
//
// The client (collab_client.js) knows the member's role and whether the room is locked or
// ended; the editor is read-only whenever the server would refuse an edit, and the page is told
// with an "access" event (gen, role, locked, ended) so that it can say why. The interviewers'
// notes go to the page with a "notes" event, and each change to a shared role's link with a
// "link" event (gen, role, and the link's token unless the role has no live link now). A join
// the server refuses for good (`forbidden`), or a connection it closes with 4003 (removed, the
// link revoked, the interview ended), stops this page: no more hellos, read-only; the server
// tells the page why.
export const CLOSE_REVOKED = 4003;

export const accessMethods = {
  applyAccess() {
    this.setEditable(this.client.mayEdit && !this.denied);
    const { role, locked, ended } = this.client;
    const shown = JSON.stringify([this.gen, role, locked, ended]);
    if (shown === this.accessShown) return; // every generation reports once, then changes only
    this.accessShown = shown;
    this.$emit("access", { gen: this.gen, role, locked, ended });
  },
  deny(reason) {
    this.denied = this.stopped = reason || "This page no longer has access to the room.";
    this.live = false;
    clearTimeout(this.helloTimer);
    clearTimeout(this.resendTimer);
    this.setEditable(false);
    this.publishStatus();
  },
  emitNotes(text) {
    this.$emit("notes", { gen: this.gen, text });
  },
  emitLinks(links) {
    for (const [role, token] of Object.entries(links))
      this.$emit("link", token === null ? { gen: this.gen, role } : { gen: this.gen, role, token });
  },
};
