import { type ChildProcessByStdio, spawn } from 'node:child_process';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { repoRoot } from '../../src/gpu/paths.ts';

/** A `wgserve serve` process started by a test. */
export interface ServeProcess {
  url: string;
  proc: ChildProcessByStdio<null, Readable, Readable>;
  /** everything it printed so far (stdout and stderr) */
  output(): string;
  /** SIGTERM (it drains and exits), SIGKILL if it has not exited within `limitMs` */
  stop(limitMs?: number): Promise<void>;
}

/**
 * Starts `wgserve serve --port 0 ...args` (the embedded model unless args say otherwise) and
 * resolves with its URL once it prints it. Loading and the pipeline warm-up took 10-16 s on the
 * 2-core software device beside other tests; the default limit is several times that.
 */
export async function startServeProcess(args: readonly string[], limitMs = 120_000): Promise<ServeProcess> {
  const proc = spawn(process.execPath, [join(repoRoot, 'bin', 'wgserve.mjs'), 'serve', '--port', '0', ...args], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout.on('data', (d) => (out += d));
  proc.stderr.on('data', (d) => (out += d));
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const dead = () => proc.exitCode !== null || proc.signalCode !== null;
  const stop = async (stopLimitMs = 30_000) => {
    if (dead()) return;
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), stopLimitMs);
    await exited;
    clearTimeout(timer);
  };
  const printed = /wgserve: serving .* at (http:\/\/[\w.:[\]-]+)/;
  const end = performance.now() + limitMs;
  while (!printed.test(out)) {
    if (dead() || performance.now() > end) {
      const why = dead() ? `(exit ${proc.exitCode ?? proc.signalCode})` : `within ${limitMs} ms`;
      await stop();
      throw new Error(`wgserve serve ${args.join(' ')} did not print its URL ${why}:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { url: printed.exec(out)![1], proc, output: () => out, stop };
}
