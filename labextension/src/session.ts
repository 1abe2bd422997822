/**
 * The session's status-bar item: system, node, job id, the time left of the job and
 * its energy so far (labelled as an estimate or as measured; the CO2 in the tooltip),
 * with notifications 10 and 2 minutes before the wall time ends ("save your work").
 *
 * The lab learns its session from the hub through its own server
 * (<base>/hpcgate/api/session, see hpcgate.lab.session), never from the scheduler.
 * The countdown runs in the browser between fetches, corrected for the difference
 * between the hub's clock and the browser's.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Notification } from '@jupyterlab/apputils';
import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { IStatusBar } from '@jupyterlab/statusbar';
import { Widget } from '@lumino/widgets';

/** The session's energy as the hub computes it (hpcgate.energy, SessionEnergy.as_json). */
interface IEnergy {
  energy_wh: number;
  method: string; // "estimate" or "measured"
  estimate: boolean;
  co2_g: number | null;
  intensity_g_per_kwh: number | null;
  label: string;
}

interface ISession {
  name: string;
  system: string | null;
  system_description: string;
  partition: string | null;
  project: string | null;
  job_id: string | null;
  node: string | null;
  state: string;
  started: number | null;
  end_time: number | null;
  now: number;
  energy?: IEnergy | null;
}

/** Minutes before the end at which the user is warned, largest first. */
const WARN_MINUTES = [10, 2];
/** Seconds between asks to the lab server (which asks the hub at most every 20 s). */
const REFRESH_SECONDS = 60;

const settings = ServerConnection.makeSettings();
const API = URLExt.join(settings.baseUrl, 'hpcgate/api/session');

function duration(seconds: number): string {
  seconds = Math.max(0, Math.round(seconds));
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  if (h) {
    return `${h} h ${String(m).padStart(2, '0')} min`;
  }
  if (m >= 10) {
    return `${m} min`;
  }
  return m ? `${m} min ${String(s).padStart(2, '0')} s` : `${s} s`;
}

/** Wh or kWh with three significant digits, as the hub's session cards show them. */
function energyText(wh: number): string {
  return wh >= 1000 ? `${Number((wh / 1000).toPrecision(3))} kWh` : `${Number(wh.toPrecision(3))} Wh`;
}

/** The energy part of the item: "12.3 Wh (estimate)" or "12.3 Wh (measured)". */
function energyPart(e: IEnergy): string {
  return `${energyText(e.energy_wh)} (${e.estimate ? 'estimate' : 'measured'})`;
}

class SessionItem extends Widget {
  private session: ISession | null = null;
  private skew = 0; // hub clock minus browser clock, seconds
  private warned = new Set<number>();

  constructor() {
    super();
    this.addClass('hpcgate-SessionItem');
    this.node.setAttribute('role', 'status');
    this.node.textContent = 'hpcgate: …';
    // a click opens the hub's page of session cards (stop, relaunch, other sessions)
    const hub = PageConfig.getOption('hubPrefix');
    if (hub) {
      this.addClass('hpcgate-SessionItem-link');
      this.node.addEventListener('click', () => window.open(URLExt.join(hub, 'home'), '_blank', 'noopener'));
    }
  }

  async fetch(): Promise<void> {
    try {
      const resp = await ServerConnection.makeRequest(API, {}, settings);
      if (resp.status === 404) {
        this.hide(); // a lab started without a hub: no session to show
        return;
      }
      if (!resp.ok) {
        this.node.title = `The session is not known (${resp.status}).`;
        return;
      }
      this.show();
      const data = (await resp.json()) as ISession;
      this.skew = data.now - Date.now() / 1000;
      this.session = data;
      this.tick();
    } catch (e) {
      this.node.title = `The session is not known: ${e}`;
    }
  }

  left(): number | null {
    const s = this.session;
    if (!s || !s.end_time) {
      return null;
    }
    return s.end_time - (Date.now() / 1000 + this.skew);
  }

  tick(): void {
    const s = this.session;
    if (!s) {
      return;
    }
    const parts = [s.system || 'session'];
    if (s.node) {
      parts.push(s.node);
    }
    if (s.job_id) {
      parts.push(`job ${s.job_id}`);
    }
    const left = this.left();
    parts.push(left === null ? 'no time limit' : `${duration(left)} left`);
    const energy = s.energy || null;
    if (energy) {
      parts.push(energyPart(energy));
    }
    this.node.textContent = parts.join(' · ');
    this.node.dataset.energy = energy ? energy.method : '';
    this.node.dataset.left = left === null ? '' : String(Math.round(left));
    this.toggleClass('hpcgate-SessionItem-ending', left !== null && left < 600);
    const where = s.system_description ? `${s.system} (${s.system_description})` : s.system;
    this.node.title =
      `Session ${s.name || 'default'} on ${where}` +
      (s.partition ? `, partition ${s.partition}` : '') +
      (s.project ? `, project ${s.project}` : '') +
      (s.end_time ? `; ends at ${new Date((s.end_time - this.skew) * 1000).toLocaleTimeString()}` : '') +
      (energy
        ? `; energy so far ${energy.label}` +
          (energy.estimate ? ' (estimated from the allocated CPUs and GPUs, not measured)' : ' (measured by the scheduler)')
        : '') +
      (PageConfig.getOption('hubPrefix') ? '. Click for all your sessions.' : '');
    if (left !== null) {
      this.warn(left);
    }
  }

  /** One notification per threshold; only the smallest one that applies, once. */
  warn(left: number): void {
    const due = WARN_MINUTES.filter(m => left <= m * 60 && left > 0);
    if (!due.length) {
      return;
    }
    const minutes = Math.min(...due);
    if (this.warned.has(minutes)) {
      return;
    }
    for (const m of due) {
      this.warned.add(m);
    }
    Notification.warning(
      `Your session on ${this.session?.system} ends in ${duration(left)}. ` +
        'Save your work now: unsaved changes are lost when it ends.',
      { autoClose: false }
    );
  }
}

const sessionPlugin: JupyterFrontEndPlugin<void> = {
  id: 'hpcgate-lab:session',
  description: "The session's system, node, job id and time left in the status bar, with warnings before it ends.",
  autoStart: true,
  optional: [IStatusBar],
  activate: async (app: JupyterFrontEnd, statusBar: IStatusBar | null) => {
    if (!statusBar) {
      return;
    }
    const item = new SessionItem();
    statusBar.registerStatusItem('hpcgate-lab:session', { item, align: 'left', rank: 1000 });
    await item.fetch();
    window.setInterval(() => item.tick(), 1000);
    window.setInterval(() => void item.fetch(), REFRESH_SECONDS * 1000);
  }
};

export default sessionPlugin;
