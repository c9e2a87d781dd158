// The screenshots of docs/mlflow-ui.md, taken from the real MLflow UI: a `mlflow server` on 127.0.0.1, a short hover
// training tracked in it, and headless Chromium doing what a person does (open the run, edit a tag, look at charts).
//
//   npm install --prefix /tmp/tour playwright-core@1          # the browser is Debian's: apt-get install chromium
//   PLAYWRIGHT_CORE=/tmp/tour/node_modules/playwright-core/index.mjs node docs/mlflow_ui_tour.mjs
//
// Environment: PYTHON (default .venv/bin/python, with entropilot and mlflow), CHROMIUM (default /usr/bin/chromium),
// OUT (default docs/images). Prints the training's console; writes mlflow-ui-*.png (1280x800, 256 colours).
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const { chromium } = await import(process.env.PLAYWRIGHT_CORE || 'playwright-core');
const root = resolve(import.meta.dirname, '..');
const python = process.env.PYTHON || join(root, '.venv/bin/python');
const out = resolve(process.env.OUT || join(root, 'docs/images'));
const work = mkdtempSync(join(tmpdir(), 'mlflow-ui-tour-'));
const port = 5000 + Math.floor(Math.random() * 1000);
const uri = `http://127.0.0.1:${port}`;
const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

const children = [];
const stopAll = () => children.forEach((child) => { try { process.kill(-child.pid, 'SIGKILL'); } catch { /* gone */ } });
process.on('exit', stopAll);
const server = spawn(python, ['-m', 'mlflow', 'server', '--backend-store-uri', `sqlite:///${work}/mlflow.db`,
  '--artifacts-destination', `${work}/artifacts`, '--host', '127.0.0.1', '--port', String(port), '--workers', '1'],
  { stdio: 'ignore', detached: true });
children.push(server);
for (let i = 0; ; i++) {
  try { if ((await fetch(`${uri}/health`)).ok) break; } catch { /* not up yet */ }
  if (i > 300) throw new Error('mlflow server not healthy after 150 s');
  await sleep(500);
}

// Small iterations (1000 env steps), so the tour takes a few minutes; plots are redrawn every 5 iterations. More
// iterations than the tour needs (about 1 a second here): it stops the training when it is done.
const lines = [];
const training = spawn(python, ['-m', 'entropilot', 'train', 'configs/hover.yaml',
  '--set', 'stop.iterations=1000', '--set', 'algorithm.train_batch_size=1000', '--set', 'algorithm.minibatch_size=250',
  '--set', 'algorithm.num_epochs=3', '--set', 'evaluation.interval=null', '--set', 'checkpoint.interval=5',
  '--set', 'stop.success_lower_bound=null', '--set', 'stop.max_crashes=null', '--set', 'checkpoint.keep_best=false',
  '--set', `checkpoint.dir=${work}/runs/hover`, '--set', 'mlflow.video=false', '--set', 'mlflow.system_metrics=false',
  '--set', 'entropy.init.max_draws=2', '--set', 'entropy.init.rollout_steps=200'],
  { cwd: root, env: { ...process.env, MLFLOW_TRACKING_URI: uri, PYTHONWARNINGS: 'ignore' },
    stdio: ['ignore', 'pipe', 'pipe'], detached: true });
children.push(training);
let pending = '';
training.stdout.on('data', (chunk) => {
  pending += chunk;
  const parts = pending.split('\n');
  pending = parts.pop();
  for (const line of parts) { lines.push(line); console.log(`  | ${line}`); }
});
training.stderr.on('data', () => {});
const lineStarting = async (prefix) => {
  for (;;) {
    const line = lines.find((l) => l.startsWith(prefix));
    if (line) return line;
    if (training.exitCode !== null) throw new Error(`training ended before a line "${prefix}"`);
    await sleep(300);
  }
};
const iteration = async (n) => {
  const line = await lineStarting(`iter ${String(n).padStart(4)} `);
  // An iteration without a learner update (its env runner lost on a loaded machine) makes empty charts: start again.
  if (/entropy +- /.test(line)) throw new Error(`no learning at iteration ${n}: ${line}`);
  return line;
};

const runUrl = (await lineStarting('MLflow run ')).split(': ')[1];
const [, experimentId, runId] = runUrl.match(/experiments\/(\d+)\/runs\/(\w+)/);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'] });
const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
const shots = [];
const shot = async (name) => { const path = join(out, `mlflow-ui-${name}.png`); await page.screenshot({ path }); shots.push(path); };
const open = async (url) => {
  await page.goto('about:blank');  // a new page load: going to the same #-address would not fetch the run again
  await page.goto(url);  // the UI polls the server: the network never goes idle
  await sleep(5000);
  const assistant = page.getByRole('button', { name: 'Close' });  // MLflow's assistant panel: closed, as a person would
  if (await assistant.count()) await assistant.first().click();
  await sleep(500);
};
const editTag = async (key, value) => {
  await page.getByRole('button', { name: 'Edit tags' }).click();
  const dialog = page.getByRole('dialog');
  await dialog.getByRole('combobox').fill(key);
  await page.keyboard.press('Enter');
  await dialog.getByPlaceholder('Type a value').fill(value);
  await sleep(500);
  return dialog;
};
const save = async (dialog) => {
  await dialog.getByRole('button', { name: 'Add tag' }).click();
  await dialog.getByRole('button', { name: 'Save tags' }).click();
  await sleep(1500);
};

// 1. The experiment, in the model-training view, with the run training.
await iteration(2);
await open(`${uri}/#/experiments/${experimentId}?workflowType=machine_learning`);
await shot('1-experiment');
// 2. The run's page: what is live (tags, pre-filled) and how to use it (description).
await open(runUrl);
await page.getByTestId('show-comment-toggle').click();  // the description, whole
await sleep(500);
await shot('2-run');
// 3. Change the target with the UI's tag editor: hover.yaml's lower_bound minimum, raised above the policy's entropy.
await open(runUrl);
const dialog = await editTag('entropilot.live.entropy.target', '4.5');
await shot('3-edit-tag');
await save(dialog);
const applied = await lineStarting('live: entropy.control.target');
// 4. The charts that follow, a few iterations later: the section `entropy` comes first.
const at = Number(lines.find((l) => l.startsWith('live:')).match(/iteration (\d+)/)[1]);
await iteration(at + 8);
await open(runUrl.replace('?', '/model-metrics?'));
await shot('4-charts');
// 5. A value the schema refuses (a target under the collapse floor, -8), said in the person's terms in the error tag.
await open(runUrl);
await save(await editTag('entropilot.live.entropy.control.target', '-9'));
const refused = await lineStarting('WARNING: live settings not applied');
await sleep(1500);
await open(runUrl);
await page.locator('[title="entropilot.live_error"]').first().scrollIntoViewIfNeeded();
await shot('5-refused');
// 6. The plot redrawn at each checkpoint (every 5 iterations here), without waiting for the end.
await iteration(at + 12);
await open(runUrl.replace('?', '/artifacts/plots/entropy.png?'));
await shot('6-plot');

console.log(`\nrun page: ${runUrl}\n${applied}\n${refused}`);
await browser.close();
stopAll();
// 256-colour PNGs: UI screenshots lose nothing visible and shrink ~3x.
spawn(python, ['-c', 'import sys; from PIL import Image\nfor p in sys.argv[1:]: Image.open(p).convert("RGB")'
  + '.quantize(256).save(p, optimize=True)', ...shots], { stdio: 'inherit' });
