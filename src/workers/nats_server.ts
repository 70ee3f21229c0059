import { spawn } from 'node:child_process';
import { accessSync, constants, statSync } from 'node:fs';
import { type AddressInfo, createConnection, createServer } from 'node:net';
import { delimiter, join } from 'node:path';
import { repoRoot } from '../gpu/paths.ts';

/**
 * A local nats-server for the disaggregated workers' control plane (and for tests): a child
 * process with no config file and no JetStream, so nothing is written to disk and it is gone
 * when stopped.
 */
export type NatsServerProcess = {
  /** nats://host:port, ready for `connect({ servers: url })` */
  url: string;
  port: number;
  /** SIGTERM, then SIGKILL if it has not exited after 3 s; resolves once it has exited. */
  stop(): Promise<void>;
};

const READY_TIMEOUT_MS = 10_000;
const KILL_AFTER_MS = 3_000;

function isExecutableFile(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

/**
 * The nats-server binary: WGSERVE_NATS_SERVER (taken as given, so a wrong override fails loudly
 * at spawn rather than silently picking another binary), then PATH, then Debian's install
 * locations (/usr/sbin is often not on a non-root PATH), then the copy scripts/setup.sh unpacks
 * into .cache/nats when it cannot install the package.
 */
export function findNatsServer(): string | null {
  const override = process.env.WGSERVE_NATS_SERVER;
  if (override) return override;
  const onPath = (process.env.PATH ?? '').split(delimiter).filter(Boolean).map((dir) => join(dir, 'nats-server'));
  const candidates = [...onPath, '/usr/sbin/nats-server', '/usr/bin/nats-server', join(repoRoot, '.cache', 'nats', 'nats-server')];
  return candidates.find(isExecutableFile) ?? null;
}

/** A port that was free a moment ago (the OS picks it); nats-server then binds it itself. */
function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, host, () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/**
 * Whether a NATS server answers on host:port. A NATS server greets every connection with an
 * `INFO {...}` line; requiring it keeps some other listener on the port from passing as ready.
 */
function natsAnswers(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host, port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(500, () => done(false));
    socket.once('error', () => done(false));
    socket.once('close', () => done(false));
    socket.once('data', (chunk: Buffer) => done(chunk.toString('latin1').startsWith('INFO')));
  });
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Spawns `nats-server -a HOST -p PORT` and resolves once it accepts connections. Throws when the
 * binary is missing, when it exits before becoming ready (with the tail of its stderr, e.g.
 * "address already in use"), or when it is not ready within 10 s (it is then killed).
 */
export async function startNatsServer(o: { host?: string; port?: number } = {}): Promise<NatsServerProcess> {
  const bin = findNatsServer();
  if (!bin) throw new Error('nats-server not found: run make setup or apt install nats-server');
  const host = o.host ?? '127.0.0.1';
  const port = o.port || (await freePort(host));

  // nats-server logs to stderr; keep only a tail for error messages (reading it also keeps the
  // pipe from filling up and blocking the server).
  const child = spawn(bin, ['-a', host, '-p', String(port)], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderrTail = '';
  child.stderr.setEncoding('utf8').on('data', (s: string) => {
    stderrTail = (stderrTail + s).slice(-2000);
  });
  let spawnError: Error | undefined;
  child.once('error', (e) => {
    spawnError = e;
  });
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  const hasExited = () => child.exitCode !== null || child.signalCode !== null;

  const stop = async () => {
    if (!hasExited()) {
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), KILL_AFTER_MS);
      await exited;
      clearTimeout(killer);
    }
  };

  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (spawnError) throw new Error(`nats-server (${bin}) failed to start: ${spawnError.message}`);
    if (hasExited()) {
      await exited; // all of stderr has been read
      const how = child.signalCode ?? `code ${child.exitCode}`;
      throw new Error(`nats-server exited early (${how}) on ${host}:${port}:\n${stderrTail.trim()}`);
    }
    if (await natsAnswers(host, port)) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`nats-server did not accept connections on ${host}:${port} within ${READY_TIMEOUT_MS / 1000} s:\n${stderrTail.trim()}`);
    }
    await sleep(50);
  }
  const urlHost = host.includes(':') ? `[${host}]` : host;
  return { url: `nats://${urlHost}:${port}`, port, stop };
}
