// Child process for crash tests: seeds one user and SIGKILLs itself at the named step.
// argv: dataDir masterUrl seedsDir userId step [seedVersion ('' for CURRENT)] ['force']
import { openMaster } from '../../dist/master/factory.js';
import { parseMasterUrl } from '../../dist/config.js';
import { seedOneUser } from '../../dist/core/users.js';

const [dataDir, masterUrl, seedsDir, userId, crashAt, seedVersion, force] = process.argv.slice(2);
const master = await openMaster(parseMasterUrl(masterUrl));
await seedOneUser(
  {
    master,
    dataDir,
    seedsDir,
    lockTimeoutMs: 10_000,
    onStep: (step) => {
      if (step === crashAt) process.kill(process.pid, 'SIGKILL');
    },
  },
  userId,
  { ...(seedVersion ? { seedVersion } : {}), ...(force === 'force' ? { force: true } : {}) },
);
await master.close();
