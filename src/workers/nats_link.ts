import { setTimeout as delay } from 'node:timers/promises';
import { Packr } from 'msgpackr';
import { Events, type NatsConnection, connect } from 'nats';
import type { ControlPlane, FromWorker, ToWorker, WorkerLink } from './control.ts';

/**
 * The control plane over NATS, for workers on other hosts: workers publish their status
 * (registration and heartbeat), tokens and handover events on `wgserve.front`; the front sends
 * each worker its dispatches and cancels on `wgserve.worker.<id>`. Membership is NATS plus the
 * heartbeat timeout (no protocol of our own); KV does not travel here.
 */
const FRONT_SUBJECT = 'wgserve.front';
const workerSubject = (id: string) => `wgserve.worker.${id}`;
const packr = new Packr({ useRecords: false });
/** after losing the server, a connection tries again this often, for ever (a broker restart loses nobody) */
const RECONNECT_WAIT_MS = 500;

async function connectTo(url: string, name: string): Promise<NatsConnection> {
  try {
    return await connect({ servers: url, name, reconnectTimeWait: RECONNECT_WAIT_MS, maxReconnectAttempts: -1 });
  } catch (err) {
    throw new Error(`cannot reach NATS at ${url}: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/** How long a closing connection may spend flushing what it still has to send. */
const DRAIN_LIMIT_MS = 2000;

/**
 * Drains (sends what is buffered, then closes); a drain that cannot finish, e.g. while the server
 * is unreachable and the client dials for ever, is cut short by a plain close so that shutdown
 * never hangs.
 */
async function closeConnection(nc: NatsConnection): Promise<void> {
  if (nc.isClosed()) return;
  // a failed drain still closes below; the limit's timer does not hold the process
  await Promise.race([nc.drain().catch(() => {}), delay(DRAIN_LIMIT_MS, undefined, { ref: false })]);
  if (!nc.isClosed()) await nc.close();
}

/**
 * Calls `handler(false)` when the connection to the server drops and `handler(true)` once it is
 * back. NATS core delivers at most once: what was published across the gap is gone (the client
 * discards its unsent buffer when it dials again), so each end must resynchronise.
 */
function watchLink(nc: NatsConnection, handler: (up: boolean) => void): void {
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === Events.Disconnect) handler(false);
      else if (s.type === Events.Reconnect) handler(true);
    }
  })();
}

/** A worker's end: listens on its own subject, publishes to the front's. */
export async function natsWorkerLink(url: string, workerId: string): Promise<WorkerLink> {
  const nc = await connectTo(url, `wgserve worker ${workerId}`);
  let handler: (m: ToWorker) => void = () => {};
  let reconnected: () => void = () => {};
  watchLink(nc, (up) => up && reconnected());
  nc.subscribe(workerSubject(workerId), {
    callback: (err, msg) => {
      if (err) return;
      try {
        handler(packr.unpack(msg.data) as ToWorker);
      } catch (e) {
        console.error(`wgserve worker ${workerId}: dropped an undecodable control message: ${e instanceof Error ? e.message : String(e)}`);
      }
    },
  });
  return {
    send: (m) => {
      if (!nc.isClosed()) nc.publish(FRONT_SUBJECT, packr.pack({ from: workerId, m }));
    },
    onMessage: (h) => (handler = h),
    onClose: (h) => void nc.closed().then(h),
    onReconnect: (h) => (reconnected = h),
    close: () => closeConnection(nc),
  };
}

/** The front's end: hears every worker on the front subject; liveness is the cluster's heartbeat timeout. */
export async function natsControlPlane(url: string): Promise<ControlPlane> {
  const nc = await connectTo(url, 'wgserve front');
  let handler: (workerId: string, m: FromWorker) => void = () => {};
  let link: (up: boolean) => void = () => {};
  watchLink(nc, (up) => link(up));
  nc.subscribe(FRONT_SUBJECT, {
    callback: (err, msg) => {
      if (err) return;
      try {
        const { from, m } = packr.unpack(msg.data) as { from: string; m: FromWorker };
        if (typeof from === 'string' && m && typeof m === 'object') handler(from, m);
      } catch {
        // not ours: ignore
      }
    },
  });
  await nc.flush(); // subscribed before anyone is told to start
  return {
    send: (id, m) => {
      if (!nc.isClosed()) nc.publish(workerSubject(id), packr.pack(m));
    },
    onMessage: (h) => (handler = h),
    onGone: () => {},
    onLink: (h) => (link = h),
    close: () => closeConnection(nc),
  };
}
