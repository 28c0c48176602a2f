// The campaign editor: template fields drawn from the synced template, the live preview and
// the audience count. A static file, so a Content-Security-Policy without inline scripts holds;
// the templates arrive as JSON in <script id="tpl-data" type="application/json">.
(function () {
  const templates = JSON.parse(document.getElementById('tpl-data').textContent);
  const form = document.getElementById('editor');
  const csrf = document.querySelector('meta[name=csrf-token]').content;
  const box = document.getElementById('fields');
  function drawFields() {
    const t = templates[form.template_id.value];
    box.innerHTML = '';
    if (!t) return;
    for (const f of t.fields) {
      const l = document.createElement('label'); l.className = 'field';
      l.innerHTML = '<span></span><input autocomplete="off">';
      l.querySelector('span').textContent = f.label + ' (' + f.name + ')';
      l.querySelector('input').name = 'f_' + f.name;
      box.appendChild(l);
    }
  }
  function preview() {
    const t = templates[form.template_id.value];
    if (!t) { document.getElementById('preview').textContent = ''; return; }
    document.getElementById('preview').textContent = t.content.replace(/\{\{\s*(\w+)\.DATA\s*\}\}/g, function (_, n) {
      const input = form.elements['f_' + n];
      return input && input.value ? input.value : '[' + n + ']';
    });
  }
  function ids(name) { return (form.elements[name].value || '').split(',').map(s => parseInt(s, 10)).filter(n => !isNaN(n)); }
  let timer = null;
  function audience() {
    clearTimeout(timer);
    timer = setTimeout(function () {
      const accounts = Array.from(form.querySelectorAll('input[name=account_ids]:checked')).map(i => parseInt(i.value, 10));
      if (!accounts.length) { document.getElementById('audience').textContent = 'pick accounts'; return; }
      const segment = {};
      if (ids('tag_ids').length) segment.tag_ids = ids('tag_ids');
      if (ids('channel_ids').length) segment.channel_ids = ids('channel_ids');
      if (ids('bought_product_ids').length) segment.bought_product_ids = ids('bought_product_ids');
      if (ids('not_bought_product_ids').length) segment.not_bought_product_ids = ids('not_bought_product_ids');
      for (const k of ['active_within_days', 'inactive_for_days', 'frequency_cap_days']) if (form.elements[k].value) segment[k] = parseInt(form.elements[k].value, 10);
      for (const k of ['followed_after', 'followed_before']) if (form.elements[k].value) segment[k] = form.elements[k].value;
      if (form.bound_phone.value) segment.bound_phone = form.bound_phone.value === 'yes';
      fetch('/api/v1/campaigns/audience', {method: 'POST', headers: {'Content-Type': 'application/json', 'X-CSRFToken': csrf},
        body: JSON.stringify({account_ids: accounts, segment: segment,
          sample_pct: parseInt(form.sample_pct.value || '100', 10), control_pct: parseInt(form.control_pct.value || '0', 10)})})
        .then(r => r.json()).then(function (a) {
          document.getElementById('audience').textContent = a.error ? a.error.message :
            a.recipients + ' recipients (' + a.matching + ' matching, ' + a.control + ' held out)';
        });
    }, 300);
  }
  form.template_id.addEventListener('change', function () { drawFields(); preview(); });
  form.addEventListener('input', function () { preview(); audience(); });
  form.addEventListener('change', audience);
  drawFields(); preview(); audience();
})();
