// One client-matrix attempt with Node, in its own process. Reads a JSON attempt on stdin,
// prints one JSON line: {"ok": bool, "status": number|null, "error": string, "body": string}.
//
//   node matrix_client.js http|undici|fetch < attempt.json
//
// http:   Node's http/https modules have no proxy support at all (HTTP_PROXY is ignored), so
//         the proxying is done by hand, as an application would: an absolute-form request line
//         with Proxy-Authorization for http:// targets; CONNECT, then tls.connect over the tunnel
//         for https:// targets (the CONNECT itself over TLS for an https:// proxy). In
//         challenge_first mode the first request goes without credentials on a keep-alive agent
//         and a 407 is answered on the same agent.
// undici: Debian's node-undici (NODE_PATH=/usr/share/nodejs), ProxyAgent with `token`
//         (5.15 reads no credentials from the proxy URI) and requestTls/proxyTls with the CA.
// fetch:  Node's built-in fetch, with HTTP_PROXY/HTTPS_PROXY and NODE_USE_ENV_PROXY=1 set by
//         the suite in the environment (Node 24 honours them; older Nodes may not).
'use strict'
const http = require('http')
const https = require('https')
const tls = require('tls')
const fs = require('fs')

function out (ok, status, error, body) {
  process.stdout.write(JSON.stringify({ ok, status: status || null, error: String(error || '').slice(-2000), body: String(body || '').slice(0, 2000) }) + '\n')
  process.exit(0)
}

function basic (a) {
  return 'Basic ' + Buffer.from(`${a.user}:${a.password}`, 'utf8').toString('base64')
}

function readAll (res) {
  return new Promise((resolve, reject) => {
    const chunks = []
    res.on('data', (c) => chunks.push(c))
    res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
    res.on('error', reject)
  })
}

// ---------------------------------------------------------------------------------- http by hand
async function viaHttp (a) {
  const proxy = new URL(a.proxy_url)
  const target = new URL(a.url)
  const ca = fs.readFileSync(a.ca_file)
  const proxyMod = proxy.protocol === 'https:' ? https : http
  const agent = new proxyMod.Agent({ keepAlive: true, maxSockets: 1, ca })
  const proxyOpts = { host: proxy.hostname, port: proxy.port, agent, servername: proxy.hostname === '127.0.0.1' ? undefined : proxy.hostname }

  async function once (withCredentials) {
    const headers = withCredentials && a.user !== null ? { 'Proxy-Authorization': basic(a) } : {}
    if (target.protocol === 'http:') {
      const res = await new Promise((resolve, reject) => {
        const req = proxyMod.request({ ...proxyOpts, method: 'GET', path: a.url, headers: { ...headers, Host: target.host } }, resolve)
        req.on('error', reject)
        req.end()
      })
      return { status: res.statusCode, body: await readAll(res) }
    }
    // CONNECT, then TLS to the origin over the tunnel.
    const { res, socket } = await new Promise((resolve, reject) => {
      const req = proxyMod.request({ ...proxyOpts, agent: false, ca, method: 'CONNECT', path: target.host, headers: { ...headers, Host: target.host } })
      req.on('connect', (res, socket) => resolve({ res, socket }))
      req.on('response', (res) => resolve({ res, socket: null }))
      req.on('error', reject)
      req.end()
    })
    if (res.statusCode !== 200) return { status: res.statusCode, body: socket ? '' : await readAll(res) }
    const res2 = await new Promise((resolve, reject) => {
      const req = https.request({
        host: target.hostname,
        port: target.port,
        path: target.pathname,
        method: 'GET',
        agent: false,
        createConnection: () => tls.connect({ socket, servername: target.hostname, ca })
      }, resolve)
      req.on('error', reject)
      req.end()
    })
    return { status: res2.statusCode, body: await readAll(res2) }
  }

  let r = await once(!a.challenge_first)
  if (r.status === 407 && a.challenge_first) r = await once(true)
  agent.destroy()
  return out(r.status === 200, r.status, `HTTP ${r.status}`, r.body)
}

// ---------------------------------------------------------------------------------------- undici
async function viaUndici (a) {
  const { ProxyAgent, request } = require('undici')
  const ca = fs.readFileSync(a.ca_file)
  const opts = { uri: a.proxy_url, requestTls: { ca }, proxyTls: { ca } }
  if (a.user !== null) opts.token = basic(a)
  const dispatcher = new ProxyAgent(opts)
  const { statusCode, body } = await request(a.url, { dispatcher })
  const text = await body.text()
  await dispatcher.close()
  return out(statusCode === 200, statusCode, `HTTP ${statusCode}`, text)
}

// ----------------------------------------------------------------------------------------- fetch
async function viaFetch (a) {
  const r = await fetch(a.url)
  const text = await r.text()
  return out(r.status === 200, r.status, `HTTP ${r.status}`, text)
}

async function main () {
  const a = JSON.parse(fs.readFileSync(0, 'utf8'))
  const kind = process.argv[2]
  try {
    await ({ http: viaHttp, undici: viaUndici, fetch: viaFetch })[kind](a)
  } catch (e) {
    const cause = e && e.cause ? ` (cause: ${e.cause.code || ''} ${e.cause.message || e.cause})` : ''
    out(false, e && e.statusCode, `${e && e.name}: ${e && e.code ? e.code + ' ' : ''}${e && e.message}${cause}`, '')
  }
}
main()
