import { Command, Option } from 'commander';
import { parseDeviceMode } from '../gpu/adapter.ts';

const deviceOption = () =>
  new Option('--device <mode>', 'adapter: auto (GPU first, software fallback), gpu, or cpu (software)')
    .env('WGSERVE_DEVICE')
    .default('auto');

// Commands load their modules when run, so `--help` and light commands start fast.
const program = new Command()
  .name('wgserve')
  .description('LLM inference serving runtime on WebGPU')
  .showHelpAfterError();

program
  .command('doctor')
  .description('print the WebGPU adapter, its features and limits, and check one kernel against its CPU reference')
  .addOption(deviceOption())
  .action(async (o: { device: string }) => {
    const { doctor } = await import('./doctor.ts');
    if (!(await doctor(parseDeviceMode(o.device)))) process.exitCode = 1;
  });

const bench = program.command('bench').description('benchmarks');
bench
  .command('kernels')
  .description('kernel microbenchmarks on real model shapes (reduced shapes on a software device)')
  .addOption(deviceOption())
  .addOption(new Option('--scale <scale>', 'shapes: full, reduced, or auto (reduced on a software device)').choices(['auto', 'full', 'reduced']).default('auto'))
  .option('--filter <regex>', 'only cases whose "family name" matches')
  .option('--json <file>', 'write the results as JSON')
  .option('--markdown <file>', 'write the results as a markdown table')
  .option('--update-docs', 'replace the table for this device class in docs/benchmarks.md', false)
  .action(async (o: { device: string; scale: 'auto' | 'full' | 'reduced'; filter?: string; json?: string; markdown?: string; updateDocs: boolean }) => {
    const { benchKernels } = await import('./bench.ts');
    await benchKernels({ ...o, device: parseDeviceMode(o.device) });
  });

try {
  await program.parseAsync(process.argv);
} catch (err) {
  console.error(`wgserve: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
}
