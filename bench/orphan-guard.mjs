// Bench child processes exit when the harness that started them is gone (killed with SIGKILL, or a test
// runner timeout), so no server outlives a bench run. Imported by bench servers; `--import`ed into nhi-proxy.
const parent = process.ppid
setInterval(() => {
  if (process.ppid !== parent) process.exit(0)
}, 1000).unref()
