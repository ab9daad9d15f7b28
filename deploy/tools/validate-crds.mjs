// Validates custom resources (Gateway API HTTPRoute, Prometheus Operator ServiceMonitor) that the
// Kubernetes schemas of kubernetes-validate do not cover. Run by scripts/validate-deploy from the
// directory where deploy/tools/package-lock.json was installed:
//   node validate-crds.mjs resources.json
// resources.json: [{"where": "overlays/production", "doc": {...}}, ...]
// Two checks per resource, both from the CRDs' OpenAPI schemas as @kubernetes-models ships them:
//  1. the schema's validator (types, enums, patterns, ranges, required fields);
//  2. TypeScript's excess-property check against the generated types, which catches unknown or
//     misspelt fields at any depth (an API server with strict field validation refuses those,
//     and a lenient one silently drops them).
// Prints one line per problem; exits 1 if there was any.
import { readFileSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const packages = {
  'gateway.networking.k8s.io': '@kubernetes-models/gateway-api',
  'gateway.networking.x-k8s.io': '@kubernetes-models/gateway-api',
  'monitoring.coreos.com': '@kubernetes-models/prometheus-operator',
};

const resources = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const problems = [];
const here = process.cwd();
const lines = [];
const ranges = [];

const label = (r) => `${r.where}: ${r.doc.kind}/${r.doc.metadata?.name ?? '?'}`;

for (const r of resources) {
  const [group, version] = String(r.doc.apiVersion ?? '').split('/');
  const pkg = packages[group];
  if (!pkg || !version) {
    problems.push(`${label(r)}: no schema for apiVersion ${r.doc.apiVersion}`);
    continue;
  }
  const modulePath = `${pkg}/${group}/${version}/${r.doc.kind}`;
  let mod;
  try {
    mod = await import(modulePath);
  } catch {
    problems.push(`${label(r)}: no schema for ${r.doc.kind} in ${r.doc.apiVersion} (${pkg})`);
    continue;
  }
  try {
    new mod[r.doc.kind](r.doc).validate();
  } catch (e) {
    problems.push(`${label(r)}: ${e.message.replaceAll('data/', '')}`);
  }
  const start = lines.length + 1;
  lines.push(`import type { I${r.doc.kind} as T${ranges.length} } from ${JSON.stringify(modulePath)};`);
  lines.push(`export const r${ranges.length}: T${ranges.length} = ${JSON.stringify(r.doc, null, 1)};`);
  ranges.push({ start, end: lines.join('\n').split('\n').length, r });
}

if (ranges.length > 0) {
  const file = join(here, 'crd-check.ts');
  writeFileSync(file, lines.join('\n') + '\n');
  writeFileSync(join(here, 'crd-check.tsconfig.json'), JSON.stringify({
    compilerOptions: {
      strict: true, noEmit: true, skipLibCheck: true, module: 'nodenext', moduleResolution: 'nodenext',
      target: 'es2022', types: [],
    },
    files: ['crd-check.ts'],
  }));
  const tsc = join(dirname(createRequire(join(here, 'x.js')).resolve('typescript/package.json')), 'bin', 'tsc');
  let out = '';
  try {
    execFileSync(process.execPath, [tsc, '-p', 'crd-check.tsconfig.json', '--pretty', 'false'], { cwd: here, encoding: 'utf8' });
  } catch (e) {
    out = `${e.stdout ?? ''}${e.stderr ?? ''}`;
    if (!out.trim()) out = String(e.message);
  }
  for (const line of out.split('\n').filter((l) => l.trim())) {
    const m = line.match(/^crd-check\.ts\((\d+),\d+\): error TS\d+: (.*)$/);
    if (!m) {
      if (!line.startsWith(' ')) problems.push(`TypeScript: ${line}`);
      continue;
    }
    const n = Number(m[1]);
    const range = ranges.find((x) => n >= x.start && n <= x.end);
    const where = range ? label(range.r) : 'crd-check.ts';
    problems.push(`${where}: ${m[2]}`);
  }
}

for (const p of problems) console.log(p);
process.exit(problems.length > 0 ? 1 : 0);
