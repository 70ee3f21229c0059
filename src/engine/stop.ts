/**
 * Holds back generated text that might be the start of a stop string, so a stop string is never
 * emitted, even when it arrives split across several tokens. `push` returns the text that is safe
 * to emit and whether a stop string was completed (the text before it is emitted, the rest dropped).
 */
export class StopMatcher {
  private pending = '';

  constructor(private readonly stops: readonly string[]) {}

  push(text: string): { emit: string; stopped: boolean } {
    this.pending += text;
    let first = -1;
    for (const s of this.stops) {
      const i = s ? this.pending.indexOf(s) : -1;
      if (i >= 0 && (first < 0 || i < first)) first = i;
    }
    if (first >= 0) {
      const emit = this.pending.slice(0, first);
      this.pending = '';
      return { emit, stopped: true };
    }
    const hold = this.heldBack();
    const emit = this.pending.slice(0, this.pending.length - hold);
    this.pending = this.pending.slice(this.pending.length - hold);
    return { emit, stopped: false };
  }

  /** Text held back at the end of generation (no stop string completed): emit it. */
  flush(): string {
    const rest = this.pending;
    this.pending = '';
    return rest;
  }

  /** Length of the longest suffix of the pending text that is a proper prefix of some stop string. */
  private heldBack(): number {
    let hold = 0;
    for (const s of this.stops) {
      for (let n = Math.min(s.length - 1, this.pending.length); n > hold; n--) {
        if (this.pending.endsWith(s.slice(0, n))) {
          hold = n;
          break;
        }
      }
    }
    return hold;
  }
}
