/**
 * Regex and JSON-schema compiles off the event loop. Walking a vocabulary through a character DFA
 * takes ~0.2-1 s at 49K tokens (more at 128K, and up to MAX_DETERMINIZE_MS for a hostile pattern):
 * on the server's thread every stream would stall meanwhile. One worker thread per tokenizer holds
 * the vocabulary's texts and compiles jobs in turn; results land in regex.ts's cache, so a cached
 * pattern never leaves this thread.
 */
import { Worker } from 'node:worker_threads';
import type { Tokenizer } from '../model/tokenizer/index.ts';
import { ConstraintError, type TokenAutomaton } from './automaton.ts';
import { cachedRegex, type RegexJob, type RegexOptions, regexJob, rememberRegex, tokenTexts } from './regex.ts';

/** What the worker answers a job with. */
export type CompileReply = { id: number; automaton: TokenAutomaton } | { id: number; error: string; constraint: boolean };

class CompileThread {
  private readonly worker: Worker;
  private readonly pending = new Map<number, { resolve: (a: TokenAutomaton) => void; reject: (e: Error) => void }>();
  private nextId = 0;

  constructor(texts: readonly (string | null)[]) {
    this.worker = new Worker(new URL('./compile_worker.mjs', import.meta.url), { workerData: { texts } });
    this.worker.unref();
    this.worker.on('message', (r: CompileReply) => {
      const p = this.pending.get(r.id)!;
      this.settled(r.id);
      if ('automaton' in r) p.resolve(r.automaton);
      else p.reject(r.constraint ? new ConstraintError(r.error) : new Error(`constraint compile failed: ${r.error}`));
    });
    this.worker.on('error', (err) => {
      for (const [id, p] of this.pending) {
        this.settled(id);
        p.reject(err);
      }
    });
  }

  run(job: RegexJob): Promise<TokenAutomaton> {
    const id = this.nextId++;
    if (this.pending.size === 0) this.worker.ref(); // a compile in flight keeps the process alive
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, job });
    });
  }

  private settled(id: number): void {
    this.pending.delete(id);
    if (this.pending.size === 0) this.worker.unref();
  }
}

const threads = new WeakMap<Tokenizer, CompileThread>();

/** compileRegex's automaton, compiled on the tokenizer's worker thread unless cached. */
export async function compileRegexOffThread(pattern: string, tokenizer: Tokenizer, opts: RegexOptions = {}): Promise<TokenAutomaton> {
  const job = regexJob(pattern, tokenizer, opts);
  const hit = cachedRegex(tokenizer, job);
  if (hit) return hit;
  let thread = threads.get(tokenizer);
  if (!thread) threads.set(tokenizer, (thread = new CompileThread(tokenTexts(tokenizer))));
  return rememberRegex(tokenizer, job, await thread.run(job));
}
