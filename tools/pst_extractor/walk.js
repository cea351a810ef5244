// Reads a PST with pst-extractor (a port of java-libpst, the reader behind Apache Tika)
// and prints what it sees as JSON: every folder's path, and each message's subject,
// sender, Message-ID and recipients. tests/test_pst_outlook.py compares this with the
// ground truth; run `npm install` in this folder first (.ci/run does).
const { PSTFile } = require("pst-extractor");

function walk(folder, path, out) {
  const messages = [];
  if (folder.contentCount > 0) {
    let item = folder.getNextChild();
    while (item !== null) {
      const recipients = [];
      for (let i = 0; i < item.numberOfRecipients; i++) {
        const r = item.getRecipient(i);
        recipients.push(r.smtpAddress || r.emailAddress);
      }
      messages.push({ nid: Number(item.descriptorNodeId.toString()), subject: item.subject, sender: item.senderEmailAddress,
                      message_id: item.internetMessageId, recipients });
      item = folder.getNextChild();
    }
  }
  out.push({ path, count: folder.contentCount, messages });
  if (folder.hasSubfolders) {
    for (const child of folder.getSubFolders()) {
      walk(child, path ? `${path}/${child.displayName}` : child.displayName, out);
    }
  }
}

const pst = new PSTFile(process.argv[2]);
const out = [];
walk(pst.getRootFolder(), "", out);
process.stdout.write(JSON.stringify({ store: pst.getMessageStore().displayName, folders: out }));
