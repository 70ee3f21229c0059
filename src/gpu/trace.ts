import type { StepTimes } from './step.ts';

/** One Chrome trace-event "complete" event (chrome://tracing, Perfetto). */
export interface TraceEvent {
  name: string;
  cat: string;
  ph: 'X';
  /** microseconds */
  ts: number;
  dur: number;
  pid: number;
  tid: number;
  args?: Record<string, unknown>;
}

/** Trace lanes: host recording and submit, GPU execution, waiting for the read-back. */
export const TRACE_LANES = { host: 1, gpu: 2, readback: 3 } as const;

/**
 * A submitted step's timeline as trace events: recording (creation to submit()), submit, the GPU's
 * time from timestamp queries (in the GPU's clock, so drawn from the submit with its measured
 * length), and the wait from submit until `readbackDone` (performance.now()). Steps recorded while
 * an earlier one's read-back is pending show as overlapping host and read-back spans.
 */
export function stepTraceEvents(label: string, t: StepTimes, o: { gpuMs: number | null; readbackDone: number; args?: Record<string, unknown> }): TraceEvent[] {
  const ev = (name: string, tid: number, from: number, to: number, args?: Record<string, unknown>): TraceEvent => ({
    name: `${name} ${label}`,
    cat: 'step',
    ph: 'X',
    ts: from * 1e3,
    dur: (to - from) * 1e3,
    pid: 1,
    tid,
    args,
  });
  const events = [ev('record', TRACE_LANES.host, t.created, t.submitCalled, o.args), ev('submit', TRACE_LANES.host, t.submitCalled, t.submitted)];
  if (o.gpuMs !== null) events.push(ev('gpu', TRACE_LANES.gpu, t.submitted, t.submitted + o.gpuMs, { note: 'duration from timestamp queries; start placed at submit' }));
  events.push(ev('read-back', TRACE_LANES.readback, t.submitted, o.readbackDone));
  return events;
}
