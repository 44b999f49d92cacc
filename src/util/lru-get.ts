// lru-cache's get() defaults its options argument to a new `{}` on every call: on the per-request lookups
// (a cached token, the token-sharing window) that is an object per request. One shared options object serves
// every call instead. get() only writes `status` into it (its diagnostics record, made only while someone
// subscribes to lru-cache's metrics channel), so that is cleared after each call: no record outlives its get.
import type { LRUCache } from 'lru-cache'

const OPTIONS: { status?: undefined } = { status: undefined }

/** `cache.get(key)` without an options object per call */
export function lruGet<K extends {}, V extends {}>(cache: LRUCache<K, V>, key: K): V | undefined {
  const value = cache.get(key, OPTIONS as LRUCache.GetOptions<K, V, unknown>)
  OPTIONS.status = undefined
  return value
}

const SET_OPTIONS: { status?: undefined } = { status: undefined }

/** `cache.set(key, value)` without an options object per call (set() writes `status` into it as get() does) */
export function lruSet<K extends {}, V extends {}>(cache: LRUCache<K, V>, key: K, value: V): void {
  cache.set(key, value, SET_OPTIONS as LRUCache.SetOptions<K, V, unknown>)
  SET_OPTIONS.status = undefined
}
