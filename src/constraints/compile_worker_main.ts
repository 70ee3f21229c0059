/** The worker side of compile_thread.ts: compiles jobs over the vocabulary texts it was started with. */
import { parentPort, workerData } from 'node:worker_threads';
import { ConstraintError } from './automaton.ts';
import type { CompileReply } from './compile_thread.ts';
import { compileRegexJob, type RegexJob } from './regex.ts';

const texts = (workerData as { texts: (string | null)[] }).texts;
const port = parentPort!;

port.on('message', ({ id, job }: { id: number; job: RegexJob }) => {
  let reply: CompileReply;
  try {
    reply = { id, automaton: compileRegexJob(job, texts) };
  } catch (err) {
    reply = { id, error: err instanceof Error ? err.message : String(err), constraint: err instanceof ConstraintError };
  }
  // the tables move to the main thread without a copy (prune() allocates each in its own buffer)
  const tables = 'automaton' in reply ? [reply.automaton.indptr, reply.automaton.pairs, reply.automaton.accepting] : [];
  port.postMessage(reply, tables.map((t) => t.buffer as ArrayBuffer));
});
