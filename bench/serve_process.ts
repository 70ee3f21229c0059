import { type ChildProcessByStdio, spawn } from 'node:child_process';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { repoRoot } from '../src/gpu/paths.ts';

/** A `wgserve serve` process started by a benchmark or a test. */
export interface ServeProcess {
  url: string;
  /** the adapter it serves on, as it printed it */
  device: string;
  proc: ChildProcessByStdio<null, Readable, Readable>;
  /** everything it printed so far (stdout and stderr) */
  output(): string;
  /** SIGTERM (it drains and exits), SIGKILL if it has not exited within `limitMs` */
  stop(limitMs?: number): Promise<void>;
}

// every process still running when this one exits is killed, so none outlives an error path that
// skipped its stop() (an uncaught exception, process.exit)
const live = new Set<ChildProcessByStdio<null, Readable, Readable>>();
let exitHook = false;

/**
 * Starts `wgserve serve --port 0 ...args` (the embedded model unless args say otherwise) and
 * resolves with its URL once it prints it. Loading and the pipeline warm-up took 10-16 s on the
 * 2-core software device beside other tests; the default limit is several times that. A process
 * that exits or misses the limit is stopped and the error carries what it printed.
 */
export async function startServeProcess(args: readonly string[], limitMs = 120_000): Promise<ServeProcess> {
  const proc = spawn(process.execPath, [join(repoRoot, 'bin', 'wgserve.mjs'), 'serve', '--port', '0', ...args], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(proc);
  if (!exitHook) {
    exitHook = true;
    process.once('exit', () => {
      for (const p of live) p.kill('SIGKILL');
    });
  }
  let out = '';
  proc.stdout.on('data', (d) => (out += d));
  proc.stderr.on('data', (d) => (out += d));
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  void exited.then(() => live.delete(proc));
  const dead = () => proc.exitCode !== null || proc.signalCode !== null;
  const stop = async (stopLimitMs = 30_000) => {
    if (dead()) return;
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), stopLimitMs);
    await exited;
    clearTimeout(timer);
  };
  const printed = /wgserve: serving .* on (.*) at (http:\/\/[\w.:[\]-]+)/;
  const end = performance.now() + limitMs;
  while (!printed.test(out)) {
    if (dead() || performance.now() > end) {
      const why = dead() ? `(exit ${proc.exitCode ?? proc.signalCode})` : `within ${limitMs} ms`;
      await stop();
      throw new Error(`wgserve serve ${args.join(' ')} did not print its URL ${why}:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const m = printed.exec(out)!;
  return { url: m[2], device: m[1], proc, output: () => out, stop };
}
