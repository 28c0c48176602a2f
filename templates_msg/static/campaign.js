// Live progress of a scheduled, sending or paused campaign: polls its stats every 2 s. The
// stats URL comes from the script element's data-stats-url (no inline script: CSP).
(function () {
  const url = document.currentScript.dataset.statsUrl;
  function poll() {
    fetch(url).then(r => r.json()).then(function (s) {
      document.getElementById('state').textContent = s.state;
      document.getElementById('progress').textContent = s.sent + ' sent of ' + s.audience + ' · ' + s.sends_per_second + '/s · ETA ' + (s.eta_seconds || '—') + ' s';
      document.getElementById('bar').setAttribute('width', Math.round(600 * (s.audience - s.left) / Math.max(s.audience, 1)));
      if (['sending', 'paused', 'scheduled'].includes(s.state)) setTimeout(poll, 2000);
    });
  }
  setTimeout(poll, 2000);
})();
