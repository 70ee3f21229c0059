import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { parse, View } from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';

/** Writes a result file (JSON, markdown, SVG), creating its folder. */
export function writeOutput(path: string, text: string): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, text);
}

/** Renders a Vega-Lite spec to SVG text without a browser (vega's headless renderer). */
export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const view = new View(parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** Renders a Vega-Lite spec and writes it to `path` as SVG; returns the SVG text. */
export async function writeSvgPlot(path: string, spec: TopLevelSpec): Promise<string> {
  const svg = await renderSvg(spec);
  writeOutput(path, svg);
  return svg;
}
