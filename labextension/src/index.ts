/**
 * hpcgate-lab: launcher tiles for the web apps hpcgate serves, and a "Running apps"
 * side panel (state, uptime; open, restart, stop, log). Everything goes through
 * hpcgate's REST API at <base>/hpcgate/api/apps (see hpcgate.lab.api).
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Dialog, IFrame, InputDialog, MainAreaWidget, Notification, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { ILauncher } from '@jupyterlab/launcher';
import { ServerConnection } from '@jupyterlab/services';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import sessionPlugin from './session';

interface IParameter {
  title: string;
  kind: string;
  default: string;
}

interface IAppInfo {
  name: string;
  family: string;
  state: string;
  uptime: number | null;
  url: string;
  available: boolean;
  missing: { program: string; install: string }[];
  managed: boolean;
  instances: number;
  new_browser_tab: boolean;
  parameters: { [name: string]: IParameter };
  launcher_entry: { enabled: boolean; title: string; path_info: string; category: string; icon_path: string };
}

const settings = ServerConnection.makeSettings();
const API = URLExt.join(settings.baseUrl, 'hpcgate/api/apps');

/** One API call; throws an Error with the server's message on failure. */
async function call(path: string, method = 'GET', body?: unknown): Promise<any> {
  const init: RequestInit = { method };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
  }
  const resp = await ServerConnection.makeRequest(API + path, init, settings);
  const text = await resp.text();
  if (!resp.ok) {
    let message = text;
    try {
      message = JSON.parse(text).message || text;
    } catch {
      /* plain text error */
    }
    throw new Error(message);
  }
  return path.endsWith('/log') ? text : JSON.parse(text);
}

/** Where the browser opens an app instance. */
function appUrl(info: IAppInfo): string {
  if (info.name === info.family && info.launcher_entry.path_info) {
    return URLExt.join(settings.baseUrl, info.launcher_entry.path_info);
  }
  return info.url;
}

function openApp(app: JupyterFrontEnd, info: IAppInfo, win: Window | null): void {
  const url = appUrl(info);
  if (win) {
    win.location.href = url;
    return;
  }
  const frame = new IFrame({ sandbox: ['allow-scripts', 'allow-same-origin', 'allow-forms', 'allow-popups', 'allow-downloads', 'allow-modals'] });
  frame.url = url;
  const widget = new MainAreaWidget({ content: frame });
  widget.id = `hpcgate-app-${info.name}`;
  widget.title.label = info.launcher_entry.title + (info.name === info.family ? '' : ` (${info.name})`);
  widget.title.closable = true;
  widget.addClass('hpcgate-app-tab');
  app.shell.add(widget, 'main');
  app.shell.activateById(widget.id);
}

/** Ask for the app's parameters; null if the user cancelled. */
async function askParameters(info: IAppInfo): Promise<{ [name: string]: string } | null> {
  const values: { [name: string]: string } = {};
  for (const [name, p] of Object.entries(info.parameters || {})) {
    const result = await InputDialog.getText({ title: `${info.launcher_entry.title}: ${p.title}`, text: p.default || '' });
    if (!result.button.accept) {
      return null;
    }
    values[name] = result.value || '';
  }
  return values;
}

async function launch(app: JupyterFrontEnd, info: IAppInfo, panel: RunningPanel): Promise<void> {
  if (!info.available) {
    const what = info.missing.map(m => `${m.program}: ${m.install}`).join('\n');
    await showDialog({ title: `${info.launcher_entry.title} is not available here`, body: `Missing:\n${what}`, buttons: [Dialog.okButton()] });
    return;
  }
  const parameters = await askParameters(info);
  if (parameters === null) {
    return;
  }
  // Open the tab now, while the click still counts as a user gesture.
  const win = info.new_browser_tab ? window.open('', '_blank') : null;
  try {
    const path = info.instances > 1 ? `/${info.family}/new` : `/${info.name}`;
    const started: IAppInfo = await call(path, 'POST', { parameters });
    openApp(app, started, win);
  } catch (err) {
    win?.close();
    await showErrorMessage(`Could not start ${info.launcher_entry.title}`, (err as Error).message);
  }
  void panel.refresh();
}

function formatUptime(seconds: number | null): string {
  if (seconds === null) {
    return '';
  }
  const s = Math.floor(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h ? `${h}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
}

/** The "Running apps" side panel: one row per app that is not stopped. */
class RunningPanel extends Widget {
  constructor(private lab: JupyterFrontEnd) {
    super();
    this.id = 'hpcgate-running-apps';
    this.addClass('hpcgate-RunningPanel');
    this.title.caption = 'Running apps';
    this.node.innerHTML = '<h2>Running apps</h2><div class="hpcgate-rows"></div>';
    window.setInterval(() => void this.refresh(), 3000);
  }

  async refresh(): Promise<IAppInfo[]> {
    let apps: IAppInfo[] = [];
    try {
      apps = (await call('')).apps;
    } catch (err) {
      return apps;
    }
    const rows = this.node.querySelector('.hpcgate-rows') as HTMLElement;
    rows.textContent = '';
    const active = apps.filter(a => a.managed && a.state !== 'stopped');
    if (!active.length) {
      rows.innerHTML = '<p class="hpcgate-empty">No apps running.</p>';
    }
    for (const info of active) {
      rows.appendChild(this.row(info));
    }
    return apps;
  }

  private row(info: IAppInfo): HTMLElement {
    const row = document.createElement('div');
    row.className = 'hpcgate-app-row';
    row.dataset.app = info.name;
    row.dataset.state = info.state;
    const label = document.createElement('div');
    label.className = 'hpcgate-app-label';
    label.textContent = `${info.launcher_entry.title} (${info.name})`;
    const status = document.createElement('div');
    status.className = 'hpcgate-app-status';
    status.textContent = `${info.state} ${formatUptime(info.uptime)}`;
    row.append(label, status);
    const actions: [string, () => Promise<void>][] = [
      ['open', async () => openApp(this.lab, info, info.new_browser_tab ? window.open('', '_blank') : null)],
      ['restart', async () => void (await call(`/${info.name}/restart`, 'POST'))],
      ['stop', async () => void (await call(`/${info.name}`, 'DELETE'))],
      ['log', async () => this.showLog(info)]
    ];
    for (const [action, run] of actions) {
      const button = document.createElement('button');
      button.className = 'jp-mod-styled hpcgate-app-action';
      button.dataset.action = action;
      button.textContent = action[0].toUpperCase() + action.slice(1);
      button.onclick = async () => {
        try {
          await run();
        } catch (err) {
          await showErrorMessage(`${action} ${info.name} failed`, (err as Error).message);
        }
        void this.refresh();
      };
      row.appendChild(button);
    }
    return row;
  }

  private async showLog(info: IAppInfo): Promise<void> {
    const body = new Widget({ node: document.createElement('pre') });
    body.addClass('hpcgate-app-log');
    body.node.textContent = await call(`/${info.name}/log`);
    await showDialog({ title: `Log of ${info.name}`, body, buttons: [Dialog.okButton()] });
  }
}

async function svgIcon(info: IAppInfo): Promise<LabIcon | undefined> {
  if (!info.launcher_entry.icon_path) {
    return undefined;
  }
  const resp = await ServerConnection.makeRequest(`${API}/${info.name}/icon`, {}, settings);
  if (!resp.ok || !(resp.headers.get('Content-Type') || '').includes('svg')) {
    return undefined;
  }
  return new LabIcon({ name: `hpcgate:${info.name}`, svgstr: await resp.text() });
}

const RUNNING_ICON = new LabIcon({
  name: 'hpcgate:running',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><rect class="jp-icon3" fill="#616161" x="3" y="4" width="18" height="12" rx="1"/><path class="jp-icon3" fill="#616161" d="M9 18h6v2H9z"/><circle fill="#4caf50" cx="17" cy="7" r="2.5"/></svg>'
});

/** The hub's announcements (maintenance, news), each a notification that stays until closed. */
async function showAnnouncements(): Promise<void> {
  const url = URLExt.join(settings.baseUrl, 'hpcgate/api/announcements');
  const resp = await ServerConnection.makeRequest(url, {}, settings);
  if (!resp.ok) {
    return;
  }
  const body = await resp.json();
  for (const item of body.announcements || []) {
    // plain text: the notification area renders it as text, never as HTML
    Notification.warning(String(item.message), { autoClose: false });
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'hpcgate-lab:plugin',
  description: 'Launcher tiles and a Running apps panel for hpcgate web apps.',
  autoStart: true,
  optional: [ILauncher],
  activate: async (app: JupyterFrontEnd, launcher: ILauncher | null) => {
    const panel = new RunningPanel(app);
    panel.title.icon = RUNNING_ICON;
    app.shell.add(panel, 'left', { rank: 900 });
    void showAnnouncements().catch(() => undefined);
    const apps = await panel.refresh();
    for (const info of apps) {
      if (info.name !== info.family || !info.managed || !info.launcher_entry.enabled) {
        continue;
      }
      const command = `hpcgate:launch-${info.name}`;
      const icon = await svgIcon(info).catch(() => undefined);
      app.commands.addCommand(command, {
        label: info.launcher_entry.title + (info.available ? '' : ' (unavailable)'),
        caption: info.available ? `Start ${info.launcher_entry.title}` : `Not available: ${info.missing.map(m => m.install).join('; ')}`,
        icon,
        execute: () => launch(app, info, panel)
      });
      launcher?.add({ command, category: info.launcher_entry.category || 'Apps', rank: 50 });
    }
  }
};

export default [plugin, sessionPlugin];
