// The constraint compiler's worker thread (compile_thread.ts). A worker starts without the main
// thread's TypeScript loader, so it registers tsx before running the TypeScript side.
import { register } from 'tsx/esm/api';

register();
await import('./compile_worker_main.ts');
