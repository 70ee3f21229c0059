import { accessSync, constants, statSync } from 'node:fs';
import { type AddressInfo, createConnection, createServer } from 'node:net';
import { StringCodec, connect } from 'nats';
import { describe, expect, it } from 'vitest';
import { findNatsServer, startNatsServer } from '../src/workers/nats_server.ts';

const connects = (port: number) =>
  new Promise<boolean>((resolve) => {
    const s = createConnection({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });

describe('local nats-server', () => {
  it('findNatsServer returns an executable file on this machine', () => {
    const bin = findNatsServer();
    expect(bin).not.toBeNull();
    expect(statSync(bin!).isFile()).toBe(true);
    expect(() => accessSync(bin!, constants.X_OK)).not.toThrow();
  });

  it('starts on a free port, serves request/reply and pub/sub, and stops', async () => {
    const server = await startNatsServer();
    expect(server.url).toBe(`nats://127.0.0.1:${server.port}`);
    const sc = StringCodec();
    const nc = await connect({ servers: server.url });
    try {
      nc.subscribe('echo', { callback: (_err, msg) => msg.respond(sc.encode(`echo:${sc.decode(msg.data)}`)) });
      const reply = await nc.request('echo', sc.encode('hi'), { timeout: 2000 });
      expect(sc.decode(reply.data)).toBe('echo:hi');

      const sub = nc.subscribe('events', { max: 1 });
      nc.publish('events', sc.encode('ping'));
      for await (const m of sub) expect(sc.decode(m.data)).toBe('ping');
    } finally {
      await nc.close();
      await server.stop();
    }
    expect(await connects(server.port)).toBe(false);
    await server.stop(); // idempotent
  });

  it('reports an early exit with nats-server stderr when the port is taken', async () => {
    const squatter = createServer((s) => s.destroy());
    await new Promise<void>((r) => squatter.listen(0, '127.0.0.1', r));
    const { port } = squatter.address() as AddressInfo;
    try {
      await expect(startNatsServer({ port })).rejects.toThrow(/exited early[\s\S]*address already in use/);
    } finally {
      await new Promise((r) => squatter.close(r));
    }
  });

  it('names a missing WGSERVE_NATS_SERVER override', async () => {
    const saved = process.env.WGSERVE_NATS_SERVER;
    process.env.WGSERVE_NATS_SERVER = '/nonexistent/nats-server';
    try {
      await expect(startNatsServer()).rejects.toThrow(/\/nonexistent\/nats-server\) failed to start: .*ENOENT/);
    } finally {
      if (saved === undefined) delete process.env.WGSERVE_NATS_SERVER;
      else process.env.WGSERVE_NATS_SERVER = saved;
    }
  });
});
