// Prints "gpu" when Dawn finds a hardware adapter through the installed Vulkan drivers, else "none".
import { create } from 'webgpu';

const adapter = await create([]).requestAdapter({ powerPreference: 'high-performance' });
console.log(adapter && !adapter.info.isFallbackAdapter ? 'gpu' : 'none');
