//! Boot counting in the boot (stage 7, before the root is chosen, and just
//! before switch_root): the thin part around [`policy::trial_plan`] and
//! [`crate::trial`]. A refused image turns the boot to the newest blessed
//! root; an image on trial uses a try before switch_root and gets the
//! runtime unit that blesses it when systemd reaches `boot-complete.target`.

use std::path::Path;

use crate::config::BootConfig;
use crate::policy::{self, TrialPlan};
use crate::record::Record;
use crate::reference::ImageSpec;
use crate::rwlayer::RwStore;
use crate::store;
use crate::trial::{self, State};

/// A try to use before switch_root.
pub struct Count {
    /// The image on trial (`sha256:<hex>`).
    pub image: String,
    hex: String,
    files: Vec<String>,
    to: State,
}

impl Count {
    /// The state this boot's try moves the image to.
    pub fn state(&self) -> State {
        self.to
    }
}

/// Look at the trial of the image this boot asks for (`image`, resolved in
/// the stores under `top`): a refused image is replaced by the blessed one to
/// go back to (and `rollback_kept` by its kept root); an image on trial gives
/// the try to use. Problems reading the counters are warnings: counting never
/// stops a boot. `dockroot plan` calls this too, with a record of its own.
pub fn prepare(
    top: &Path,
    cfg: &BootConfig,
    store: &RwStore,
    image: &mut ImageSpec,
    rollback_kept: &mut Option<String>,
    record: &mut Record,
) -> Option<Count> {
    let tries = cfg.params.tries;
    if tries == 0 {
        record.trial = serde_json::json!({ "state": "off" });
        return None;
    }
    // An image that does not resolve is the fresh root's failure, said there.
    let target = store::resolve_image(top, &cfg.store, image).ok()?.image_id;
    let states = match store.trials(false) {
        Ok(Some(t)) => t.states().unwrap_or_else(|e| {
            record.warn(format!("boot counting: {e}"));
            Default::default()
        }),
        Ok(None) => Default::default(),
        Err(e) => {
            record.warn(format!("boot counting: {e}"));
            Default::default()
        }
    };
    let kept = store.kept().unwrap_or_default();
    let current = store.current_image();
    let plan = policy::trial_plan(&target, &states, tries, cfg.params.retry, current.as_deref(), &kept);
    let last = trial::id_hex(&target).and_then(|h| policy::last_blessed(h, &states, current.as_deref(), &kept));
    record.trial = trial_json(&target, &plan, &states, last);
    match plan {
        TrialPlan::Off | TrialPlan::Blessed => None,
        TrialPlan::Count { from, to } => {
            let hex = trial::id_hex(&target)?.to_string();
            let files = states.get(&hex).map(|e| e.1.clone()).unwrap_or_default();
            if from == State::New && !files.is_empty() {
                log::info!("dockroot.trial=retry: image {target} gets {tries} new tries");
            }
            Some(Count { image: target, hex, files, to })
        }
        TrialPlan::Refused { reason, back: Some(back) } => {
            let via = match &back.kept {
                Some(k) => format!(" (else a copy of its kept root {})", store.kept_shown(k)),
                None => String::new(),
            };
            record.warn(format!("FALLBACK: {reason}: booting image {}, the newest blessed{via}", back.image));
            record.fallback = Some(serde_json::json!({ "reason": reason, "booted": back.image }));
            *image = ImageSpec::Id(back.image);
            *rollback_kept = back.kept;
            None
        }
        TrialPlan::Refused { reason, back: None } => {
            record.warn(format!("{reason}, but no root was ever blessed to go back to: booting it anyway"));
            None
        }
    }
}

/// boot.json's `"trial"`; `last` is the newest blessed root other than the
/// target's (where a refusal goes back to).
fn trial_json(
    target: &str,
    plan: &TrialPlan,
    states: &std::collections::BTreeMap<String, (State, Vec<String>)>,
    last: Option<policy::Back>,
) -> serde_json::Value {
    let refused: Vec<String> =
        states.iter().filter(|(_, (s, _))| s.refused()).map(|(h, _)| format!("sha256:{h}")).collect();
    let blessed: Vec<String> =
        states.iter().filter(|(_, (s, _))| *s == State::Good).map(|(h, _)| format!("sha256:{h}")).collect();
    let (state, left) = match plan {
        TrialPlan::Off => ("off".to_string(), None),
        TrialPlan::Blessed => ("blessed".to_string(), None),
        TrialPlan::Count { to: State::Trial { left, .. }, .. } => ("on trial".to_string(), Some(*left)),
        TrialPlan::Count { .. } => ("on trial".to_string(), None),
        TrialPlan::Refused { .. } => ("refused".to_string(), None),
    };
    let last = last.map(|b| serde_json::json!({ "image": b.image, "kept": b.kept }));
    serde_json::json!({ "image": target, "state": state, "tries_left": left, "refused": refused, "blessed": blessed,
        "last_blessed": last })
}

/// Use the try, durably, and leave the unit that blesses the boot. Called just
/// before switch_root, only when the root that boots is a fresh one of the
/// image on trial.
pub fn use_try(store: &RwStore, count: &Count, record: &mut Record) {
    let done = store.trials(true).and_then(|t| {
        let t = t.ok_or_else(|| crate::error::Error::msg("the trials directory vanished"))?;
        t.set(&count.hex, &count.files, count.to)
    });
    match done {
        Ok(()) => {
            if let State::Trial { left, done } = count.to {
                let total = u16::from(left) + u16::from(done);
                log::info!("image {} is on trial: this boot is try {done} of {total}", count.image);
            }
        }
        Err(e) => record.warn(format!("boot counting: this boot of image {} is not counted: {e}", count.image)),
    }
    if let Err(e) = leave_bless_unit() {
        record.warn(format!("boot counting: nothing will bless this boot: {e}"));
    }
}

/// The runtime unit that runs `dockroot bless` once systemd reaches
/// `boot-complete.target` (as systemd-bless-boot.service does), and its wants link.
pub const BLESS_UNIT: &str = "[Unit]
Description=dockroot: this image booted well (boot counting)
Documentation=file:/run/dockroot/boot.json
DefaultDependencies=no
Requires=boot-complete.target
After=local-fs.target boot-complete.target
Conflicts=shutdown.target
Before=shutdown.target
ConditionPathExists=/run/dockroot/dockroot

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/run/dockroot/dockroot bless
";

fn leave_bless_unit() -> std::io::Result<()> {
    let dir = Path::new("/run/systemd/system");
    std::fs::create_dir_all(dir.join("basic.target.wants"))?;
    std::fs::write(dir.join("dockroot-bless.service"), BLESS_UNIT)?;
    let link = dir.join("basic.target.wants/dockroot-bless.service");
    match std::os::unix::fs::symlink("../dockroot-bless.service", &link) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}
