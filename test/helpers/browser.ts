// Debian's Chromium driven headless by playwright-core (no browser download). The flags keep it off the
// network: this machine has none, and Chromium's background services would otherwise retry forever.
import { existsSync } from 'node:fs'
import { type Browser, chromium } from 'playwright-core'
import { skipWithout } from './tools.ts'

export const CHROMIUM = '/usr/bin/chromium'

/** tap `skip` option: false when Chromium is installed, else the reason */
export const skipWithoutChromium: false | string = skipWithout(CHROMIUM, existsSync(CHROMIUM))

export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  })
}
