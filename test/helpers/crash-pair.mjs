// Child process for pairing crash tests: runs the built CLI with argv, and SIGKILLs itself in the
// middle of the first pairing of a master with its data dir.
// argv: point dataDir ...cli args
//   stamped    the data dir's stamp is written, the master's record of the pairing not complete
//              (killed as the master is asked to record or finish it with the stamp there)
//   recorded   the master recorded the pairing's id, the data dir not stamped yet
import { existsSync } from 'node:fs';
import path from 'node:path';
import { SqliteMaster } from '../../dist/master/sqlite-master.js';

const [point, dataDir, ...args] = process.argv.slice(2);
const stamp = path.join(dataDir, '.acm2', 'data-dir.json');
const die = () => process.kill(process.pid, 'SIGKILL');

for (const name of ['pairDataDir', 'settleDataDirPairing']) {
  const real = SqliteMaster.prototype[name];
  if (!real) continue;
  SqliteMaster.prototype[name] = async function (...a) {
    if (point === 'stamped' && existsSync(stamp)) die();
    const r = await real.apply(this, a);
    if (point === 'recorded' && !existsSync(stamp)) die();
    return r;
  };
}
process.argv = [process.argv[0], 'acm2', ...args];
await import('../../dist/main.js');
