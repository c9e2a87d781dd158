// The screenshot of a threshold sweep in MLflow's comparison view (docs/sweeps.md): a `mlflow server` on 127.0.0.1
// over the sweep's store, its child runs opened in *Compare*, and the parallel-coordinates plot set, as a person sets
// it, to go from the threshold to what entropy-aware init kept.
//
//   npm install --prefix /tmp/tour playwright-core@1          # the browser is Debian's: apt-get install chromium
//   PLAYWRIGHT_CORE=/tmp/tour/node_modules/playwright-core/index.mjs node docs/mlflow_sweep_compare.mjs \
//       /tmp/sweeps/mlflow.db PARENT_RUN_ID
//
// Environment: PYTHON (default .venv/bin/python, with mlflow), CHROMIUM (default /usr/bin/chromium), OUT (default
// docs/images). Writes mlflow-sweep-compare.png (1280x800, 256 colours).
import { spawn } from 'node:child_process';
import { join, resolve } from 'node:path';

const { chromium } = await import(process.env.PLAYWRIGHT_CORE || 'playwright-core');
const [store, parentRunId] = process.argv.slice(2);
if (!store || !parentRunId) throw new Error('usage: node docs/mlflow_sweep_compare.mjs STORE.db PARENT_RUN_ID');
const root = resolve(import.meta.dirname, '..');
const python = process.env.PYTHON || join(root, '.venv/bin/python');
const out = resolve(process.env.OUT || join(root, 'docs/images'));
const port = 5000 + Math.floor(Math.random() * 1000);
const uri = `http://127.0.0.1:${port}`;
const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
const params = ['entropy.init.threshold'];
const metrics = ['entropy_init/draws', 'entropy_init/cleared', 'entropy_init/chosen_entropy'];

const server = spawn(python, ['-m', 'mlflow', 'server', '--backend-store-uri', `sqlite:///${resolve(store)}`,
  '--host', '127.0.0.1', '--port', String(port), '--workers', '1'], { stdio: 'ignore', detached: true });
process.on('exit', () => { try { process.kill(-server.pid, 'SIGKILL'); } catch { /* gone */ } });
for (let i = 0; ; i++) {
  try { if ((await fetch(`${uri}/health`)).ok) break; } catch { /* not up yet */ }
  if (i > 300) throw new Error('mlflow server not healthy after 150 s');
  await sleep(500);
}
const api = async (path, body) => (await fetch(`${uri}/api/2.0/mlflow/${path}`, body === undefined ? {} : {
  method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) })).json();
const parent = (await api(`runs/get?run_id=${parentRunId}`)).run;
const experimentId = parent.info.experiment_id;
const children = (await api('runs/search', { experiment_ids: [experimentId], max_results: 1000,
  filter: `tags.mlflow.parentRunId = '${parentRunId}'` })).runs;
const runIds = children.map((run) => run.info.run_id);
console.log(`sweep ${parent.info.run_name}: ${runIds.length} child runs`);

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'] });
const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
const query = `runs=${encodeURIComponent(JSON.stringify(runIds))}&experiments=${encodeURIComponent(JSON.stringify([experimentId]))}`;
await page.goto(`${uri}/#/compare-runs?${query}`);
await sleep(6000);
const assistant = page.getByRole('button', { name: 'Close' });  // MLflow's assistant panel: closed, as a person would
if (await assistant.count()) await assistant.first().click();
// The parallel-coordinates plot's two pickers (parameters, then metrics): cleared, then filled with ours.
await page.getByRole('button', { name: 'Clear All' }).click();
const pickers = page.locator('.ant-select-selector, [role="combobox"]');
const choose = async (picker, names) => {
  for (const name of names) {
    await picker.click();
    await page.keyboard.type(name);
    await sleep(400);
    await page.keyboard.press('Enter');
    await sleep(400);
  }
  await page.keyboard.press('Escape');
};
await choose(pickers.nth(0), params);
await choose(pickers.nth(1), metrics);
await page.getByRole('heading', { name: /^Comparing/ }).click();  // the pickers' focus off
await sleep(2000);
const path = join(out, 'mlflow-sweep-compare.png');
await page.screenshot({ path });
await browser.close();
// A 256-colour PNG: a UI screenshot loses nothing visible and shrinks ~3x.
spawn(python, ['-c', 'import sys; from PIL import Image\nfor p in sys.argv[1:]: Image.open(p).convert("RGB")'
  + '.quantize(256).save(p, optimize=True)', path], { stdio: 'inherit' }).on('exit', () => process.exit(0));
