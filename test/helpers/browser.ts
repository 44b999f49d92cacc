// Debian's Chromium driven headless by playwright-core (no browser download). The flags keep it off the
// network: this machine has none, and Chromium's background services would otherwise retry forever.
import { existsSync } from 'node:fs'
import { type Browser, chromium, type Page } from 'playwright-core'
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

/**
 * Clicks the live view's `nth` event and waits for its audit record in the detail panel. The feed holds
 * still while the pointer is over it, as it does for a person reading it; locators are lazy, so the row is
 * pinned by its request id rather than by position (events still arriving would shift it).
 */
export async function openEventAudit(
  page: Page,
  nth: number,
): Promise<{ requestId: string; identity: string | null }> {
  await page.waitForSelector('#events li[data-request-id]', { timeout: 10_000 })
  await page.hover('#events')
  const requestId = (await page
    .locator('#events li[data-request-id]')
    .nth(nth)
    .getAttribute('data-request-id'))!
  const event = page.locator(`#events li[data-request-id="${requestId}"]`)
  const identity = await event.getAttribute('data-identity')
  await event.click()
  await page
    .waitForSelector(`#audit-detail dl[data-request-id="${requestId}"]`, { timeout: 15_000 })
    .catch(async (err) => {
      throw new Error(
        `${err.message}\naudit panel after click: ${await page.locator('#audit-detail').innerHTML()}`,
      )
    })
  return { requestId, identity }
}

/** waits until the live view's split chart holds `n` samples (one per refresh, every 2 s) */
export async function splitChartSamples(page: Page, n: number): Promise<void> {
  await page.waitForFunction((n) => Number(document.getElementById('split-chart')?.dataset.samples) >= n, n)
}
