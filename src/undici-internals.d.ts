// undici has no exports map, so its modules can be imported one by one; only the entry point has types.
declare module 'undici/lib/dispatcher/pool.js' {
  const Pool: unknown
  export default Pool
}
declare module 'undici/lib/core/constants.js' {
  const constants: unknown
  export default constants
}
declare module 'undici/lib/core/connect.js' {
  const buildConnector: unknown
  export default buildConnector
}
