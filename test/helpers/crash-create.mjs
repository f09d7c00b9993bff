// Child process for `user create` crash tests: SIGKILLs itself at the named point of a create.
// argv: point dataDir masterUrl seedsDir email username [--async]
//   created       the master rows are committed, the key not shown yet (as any kill before the print)
//   <seed step>   mid-seed ('files_staged', …: see SeedStep)
//   shown         the built CLI, killed as soon as stdout has taken the key, before the master records that
//   reissued      the built CLI, not killed: as its seed begins, another run of the same create (on a
//                 host that cannot see this one) revokes its key and issues one of its own
import { openMaster } from '../../dist/master/factory.js';
import { parseMasterUrl } from '../../dist/config.js';
import { createUser } from '../../dist/core/users.js';

const [point, dataDir, masterUrl, seedsDir, email, username, ...rest] = process.argv.slice(2);
const async = rest.includes('--async');
const die = () => process.kill(process.pid, 'SIGKILL');

if (point === 'shown') {
  const write = process.stdout.write.bind(process.stdout);
  process.stdout.write = (chunk, enc, cb) => {
    const done = typeof enc === 'function' ? enc : cb;
    return write(chunk, (e) => {
      if (!e && String(chunk).includes('acm2_')) die();
      done?.(e);
    });
  };
  process.argv = [process.argv[0], 'acm2', 'user', 'create', '--email', email, '--username', username, '--data-dir', dataDir, '--master', masterUrl, '--seeds', seedsDir, '--json', ...rest];
  await import('../../dist/main.js');
} else if (point === 'reissued') {
  const { SqliteMaster } = await import('../../dist/master/sqlite-master.js');
  const claim = SqliteMaster.prototype.claimJobForUser;
  let done = false;
  SqliteMaster.prototype.claimJobForUser = async function (userId, ...more) {
    if (!done) {
      done = true;
      const other = await openMaster(parseMasterUrl(masterUrl));
      const marked = await other.undeliveredKey(userId);
      await other.reissueKey({ userId, oldKeyId: marked.apiKeyId, keyHash: 'x', keyPrefix: 'acm2_elsewh', keyName: 'elsewhere', issuedBy: 'otherhost:1:aaaaaa:0' });
      await other.close();
    }
    return claim.call(this, userId, ...more);
  };
  process.argv = [process.argv[0], 'acm2', 'user', 'create', '--email', email, '--username', username, '--data-dir', dataDir, '--master', masterUrl, '--seeds', seedsDir, '--json', ...rest];
  await import('../../dist/main.js');
} else {
  const master = await openMaster(parseMasterUrl(masterUrl));
  await createUser(
    { master, dataDir, seedsDir, lockTimeoutMs: 10_000, onStep: (step) => step === point && die() },
    { email, username, async },
    { onCreated: () => point === 'created' && die() },
  );
  await master.close();
  process.exit(0);
}
