// `acm2 user show`: not built yet; says so and exits 70 rather than printing fake output.

import { NotImplementedError } from '../errors.js';
import type { CommandCall } from './program.js';

export async function run(_call: CommandCall): Promise<void> {
  throw new NotImplementedError('user show');
}
